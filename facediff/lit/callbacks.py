"""Callbacks and plugins: sample grids, graceful interruption, atomic checkpoint writes."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import default_collate

from facediff.visualize import colorize, grid, save_png, to_uint8

log = logging.getLogger(__name__)


def condition_batch(datamodule, split: str, count: int, model=None) -> dict:
    """The first `count` items of a split, collated: fixed conditions for grids and metrics.
    With `model`, the mask is kept only if the model takes one (else it is not a condition and
    must not be scored as one)."""
    ds = datamodule.dataset(split)
    batch = default_collate([ds[i] for i in range(min(count, len(ds)))])
    if model is not None and "mask" not in model.requires:
        batch.pop("mask", None)
    return batch


def repeat_batch(batch: dict, times: int) -> dict:
    """Each condition `times` times in a row (B*times items)."""
    return {k: v.repeat_interleave(times, 0) for k, v in batch.items()}


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


class SampleGrid(L.Callback):
    """Every `every_n_steps` (and at the end), sample with the EMA weights for fixed validation
    conditions and fixed seeds; each row: the real image, its mask, then the samples.
    Written to `<run>/samples/step_XXXXXX.png` and logged to W&B when it is a logger."""

    def __init__(
        self,
        every_n_steps: int = 500,
        num_conditions: int = 6,
        samples_per_condition: int = 4,
        num_steps: int | None = None,
        seed: int = 0,
        upscale: int = 2,
    ):
        self.every_n_steps, self.num_conditions = every_n_steps, num_conditions
        self.samples_per_condition, self.num_steps, self.seed = (
            samples_per_condition,
            num_steps,
            seed,
        )
        self.upscale = upscale
        self._last_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step > 0:
            self.write(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.write(trainer, pl_module)

    @torch.no_grad()
    def write(self, trainer, pl_module) -> Path | None:
        if (
            trainer.global_step == self._last_step
            or trainer.datamodule is None
            or not trainer.is_global_zero
            or trainer.fast_dev_run
            or not hasattr(pl_module, "generate")
        ):
            return None
        self._last_step = trainer.global_step
        cond = condition_batch(trainer.datamodule, "val", self.num_conditions)
        k = self.samples_per_condition
        with pl_module.ema_weights():
            batch = to_device(repeat_batch(cond, k), pl_module.device)
            kwargs = {"num_steps": self.num_steps} if self.num_steps else {}
            images = to_uint8(pl_module.generate(batch, seed=self.seed, **kwargs))
        real = to_uint8(cond["image"])
        rows = []
        for i in range(len(real)):
            row = [real[i]] + ([colorize(cond["mask"][i])] if "mask" in cond else [])
            rows.append(row + list(images[i * k : (i + 1) * k]))
        root = Path(trainer.default_root_dir)
        path = save_png(
            grid(rows), root / "samples" / f"step_{trainer.global_step:06d}.png", self.upscale
        )
        for lg in trainer.loggers:
            if isinstance(lg, L.pytorch.loggers.WandbLogger):
                lg.log_image("samples", [str(path)], step=trainer.global_step)
        log.info("sample grid: %s", path)
        return path


class FidelityMonitor(L.Callback):
    """Every `every_n_steps`, a cheap slice of the evaluation protocol: sample (EMA weights,
    `num_steps` sampler steps) for the first `num_conditions` validation items and log how well
    the samples follow their conditions, and another item's conditions, as
    fidelity/{attr_acc,mask_acc,miou}[_shuffled]: on a W&B dashboard the conditioning rising,
    not only the loss. The evaluators are the protocol's (`facediff.evaluation.report`),
    trained before fit when absent."""

    def __init__(
        self,
        every_n_steps: int = 5000,
        num_conditions: int = 64,
        num_steps: int | None = 25,
        seed: int = 0,
        evaluators_dir: str | None = None,
        parser_steps: int = 300,
        classifier_steps: int = 300,
    ):
        self.every_n_steps, self.num_conditions = every_n_steps, num_conditions
        self.num_steps, self.seed, self.evaluators_dir = num_steps, seed, evaluators_dir
        self.parser_steps, self.classifier_steps = parser_steps, classifier_steps
        self.parser = self.classifier = None
        self._last_step = -1

    def prepare(self, datamodule) -> None:
        """Load (or train) the evaluators; facediff-train calls this before fit on rank 0."""
        from facediff.evaluation.report import evaluators

        if self.every_n_steps and self.parser is None:
            self.parser, self.classifier = evaluators(
                datamodule, self.evaluators_dir, self.parser_steps, self.classifier_steps
            )

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and hasattr(pl_module, "generate") and trainer.datamodule is not None:
            self.prepare(trainer.datamodule)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step > 0:
            metrics = self.measure(trainer, pl_module)
            if metrics:
                # straight to the loggers, at the step Lightning logs this batch's loss at
                # (self.log from a callback re-logs the value at later steps until replaced)
                step = trainer.fit_loop.epoch_loop._batches_that_stepped
                for lg in trainer.loggers:
                    lg.log_metrics(metrics, step=step)
                trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})

    @torch.no_grad()
    def measure(self, trainer, pl_module) -> dict | None:
        from facediff.evaluation.report import roll, score

        if (
            self.parser is None
            or trainer.global_step == self._last_step
            or not trainer.is_global_zero
            or trainer.fast_dev_run
        ):
            return None
        self._last_step = trainer.global_step
        dm = trainer.datamodule
        cond = condition_batch(dm, "val", self.num_conditions, pl_module)
        with pl_module.ema_weights():
            batch = to_device({k: v for k, v in cond.items() if k != "image"}, pl_module.device)
            images = pl_module.generate(batch, seed=self.seed, num_steps=self.num_steps).cpu()
        names = dm.attr_names
        own = score(images, cond, self.parser, self.classifier, names)
        other = score(images, roll(cond), self.parser, self.classifier, names)
        keys = [k for k in ("attr_acc", "mask_acc", "miou") if k in own]
        metrics = {f"fidelity/{k}": own[k] for k in keys}
        metrics |= {f"fidelity/{k}_shuffled": other[k] for k in keys}
        log.info("fidelity at step %d: %s", trainer.global_step, metrics)
        return metrics


class GracefulInterrupt(L.Callback):
    """SIGTERM or SIGINT: finish the current step, write `<dirpath>/last.ckpt`, stop cleanly.

    SIGINT gets a handler of its own (instead of a KeyboardInterrupt in the middle of a step);
    SIGTERM goes through Lightning's own handler, which ends the step and raises
    SIGTERMException: the checkpoint is written then (`on_exception`). A second SIGINT stops
    at once."""

    def __init__(self, dirpath: str, signals: tuple[str, ...] = ("SIGINT",)):
        self.dirpath, self.signals = Path(dirpath), signals
        self.received: str | None = None
        self.saved = False
        self._previous = {}

    def _handler(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name
        for name, prev in self._previous.items():  # a second signal acts at once
            signal.signal(getattr(signal, name), prev)

    def on_fit_start(self, trainer, pl_module) -> None:
        self.received, self.saved = None, False
        if trainer.is_global_zero:
            for name in self.signals:
                sig = getattr(signal, name)
                self._previous[name] = signal.getsignal(sig)
                signal.signal(sig, self._handler)

    def _save(self, trainer, why: str) -> None:
        if self.saved:
            return
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path)
        self.saved = True
        log.warning(
            "%s received: checkpoint written to %s (step %d); stopping",
            why,
            path,
            trainer.global_step,
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.received or trainer.received_sigterm:
            self._save(trainer, self.received or "SIGTERM")
            trainer.should_stop = True

    def on_exception(self, trainer, pl_module, exception) -> None:
        if isinstance(exception, SIGTERMException) or self.received:
            self._save(trainer, self.received or "SIGTERM")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for name, prev in self._previous.items():
            signal.signal(getattr(signal, name), prev)
        self._previous = {}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to `<path>.tmp`, fsyncs it and renames it over `<path>`: a kill in
    the middle of a save leaves the previous file whole."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
