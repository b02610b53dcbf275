"""FidelityMonitor: a cheap slice of the evaluation protocol logged during training."""

from __future__ import annotations

import logging
import time

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger

from facediff.data.batch import condition_batch, to_device
from facediff.data.labels import mask_vocabulary
from facediff.evaluation.evaluator_cache import evaluators
from facediff.evaluation.protocol import read_images, roll, score
from facediff.lit.diffusion import LatentDiffusion
from facediff.models.autoencoders import PixelSpace
from facediff.visualize import to_numpy_images

log = logging.getLogger(__name__)


@torch.no_grad()
def first_stage_round_trip(autoencoder, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] encoded and decoded by a latent model's first stage, on
    its device: what a sampler that found the perfect latents would give."""
    weight = next(autoencoder.parameters())
    out = [autoencoder.decode(autoencoder.encode(b.to(weight))).float().clamp(-1, 1).cpu()
           for b in images.split(batch)]  # fmt: skip
    return torch.cat(out)


def at_resolution(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] brought down to `size` px (area averaging) and back up
    (bicubic): what a first stage that keeps as much as a `size` px image would give, the yard
    stick for its round trip (`fidelity/<metric>_real_<size>px`)."""
    small = F.interpolate(images, size=(size, size), mode="area")
    return F.interpolate(small, size=images.shape[-2:], mode="bicubic").clamp(-1, 1)


def reference_sizes(resolution: int) -> list[int]:
    """The lower resolutions the monitor scores the real images at: a half and a quarter."""
    return [resolution // f for f in (2, 4) if resolution // f >= 4]


class FidelityMonitor(L.Callback):
    """Every `every_n_steps`, a cheap slice of the evaluation protocol: sample (EMA weights,
    `num_steps` sampler steps) for the first `num_conditions` validation items and log how well
    the samples follow their conditions, and another item's conditions, as
    fidelity/{attr_acc,mask_acc,miou}[_shuffled]: on a W&B dashboard the conditioning rising,
    not only the loss. On W&B the samples come too, as the table "fidelity/samples": each
    sample with its conditioning mask and the parser's reading of it as segmentation layers, and
    its condition's attributes as columns (1, 0, or empty where unknown). The evaluators are
    the protocol's (`facediff.evaluation.evaluator_cache`), trained before fit when absent.

    For a time-to-quality curve each measurement also logs fidelity/{metric}_real (the
    evaluators on the real images of the same conditions: the ceiling), for a latent model
    fidelity/{metric}_decoded (the same images through its autoencoder: the ceiling of what it
    can generate, where a weak first stage shows), fidelity/{metric}_real_{size}px (the real
    images at half and a quarter of the resolution, upsampled again: `at_resolution`, the
    detail a first stage must keep to reach a score) and time/train_s, the
    seconds spent training so far without the measurements themselves; it is kept in the
    checkpoint, so a resumed run's clock goes on where it stopped."""

    def __init__(
        self,
        every_n_steps: int = 5000,
        num_conditions: int = 64,
        num_steps: int | None = 25,
        seed: int = 0,
        evaluators_dir: str | None = None,
        parser_steps: int = 300,
        classifier_steps: int = 300,
        parser_experiment: str | None = None,
    ):
        self.every_n_steps, self.num_conditions = every_n_steps, num_conditions
        self.num_steps, self.seed, self.evaluators_dir = num_steps, seed, evaluators_dir
        self.parser_steps, self.classifier_steps = parser_steps, classifier_steps
        self.parser_experiment = parser_experiment
        self.parser = self.classifier = None
        self._last_step = -1
        self.train_seconds = 0.0  # up to the last measurement (or checkpoint)
        self._clock: float | None = None  # perf_counter when train_seconds was last brought up
        self._ceilings: dict | None = None

    def state_dict(self) -> dict:
        return {"train_seconds": self._seconds()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.train_seconds = float(state_dict.get("train_seconds", 0.0))

    def _seconds(self) -> float:
        now = time.perf_counter()
        if self._clock is not None:
            self.train_seconds += now - self._clock
        self._clock = now
        return self.train_seconds

    def on_train_start(self, trainer, pl_module) -> None:
        self._clock = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self._seconds()
        self._clock = None

    def prepare(self, datamodule, train: bool = True) -> None:
        """Load the evaluators (facediff-train has trained them before fit; `train`: train
        them here when they are missing)."""
        if self.every_n_steps and self.parser is None:
            self.parser, self.classifier = evaluators(
                datamodule,
                self.evaluators_dir,
                self.parser_steps,
                self.classifier_steps,
                train,
                self.parser_experiment,
            )

    def setup(self, trainer, pl_module, stage: str) -> None:
        if (
            stage == "fit"
            and trainer.is_global_zero  # the one rank that measures
            and isinstance(pl_module, LatentDiffusion)
            and trainer.datamodule is not None
            and not trainer.fast_dev_run  # a wiring check: no evaluators trained for it
        ):
            # never trained inside a multi-process fit: the other ranks would wait in a
            # collective for as long as it takes
            self.prepare(trainer.datamodule, train=trainer.world_size == 1)

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
        if (
            self.parser is None
            or trainer.global_step == self._last_step
            or not trainer.is_global_zero
            or trainer.fast_dev_run
        ):
            return None
        self._last_step = trainer.global_step
        train_seconds = self._seconds()
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
        if self._ceilings is None:  # the same items' real images: what the evaluators can reach
            real = cond["image"]
            references = {"_real": real} | {
                f"_real_{size}px": at_resolution(real, size)
                for size in reference_sizes(real.shape[-1])
            }
            if not isinstance(pl_module.autoencoder, PixelSpace):  # and through the first stage
                references["_decoded"] = first_stage_round_trip(pl_module.autoencoder, real)
            self._ceilings = {}
            for suffix, seen in references.items():
                read = score(seen, cond, self.parser, self.classifier, names)
                self._ceilings |= {f"fidelity/{k}{suffix}": read[k] for k in keys}
        metrics |= self._ceilings | {"time/train_s": train_seconds}
        log.info("fidelity at step %d: %s", trainer.global_step, metrics)
        self.log_samples(trainer, images, cond, names)
        self._clock = time.perf_counter()  # the measurement is not training time
        return metrics

    def log_samples(self, trainer, images: torch.Tensor, cond: dict, names: list[str]) -> None:
        """The measured samples as a wandb.Table in the run's W&B run (nothing without one)."""
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        import wandb

        labels, _ = read_images(images, self.parser, self.classifier, names)
        data = getattr(getattr(trainer, "datamodule", None), "data", None)
        recorded = data.meta.get("mask_classes") if data is not None else None
        classes = dict(enumerate(mask_vocabulary(recorded)))  # the data's classes
        pictures, data = to_numpy_images(images), []
        for i, picture in enumerate(pictures):
            layers = {}
            if "mask" in cond:
                layers["condition"] = {"mask_data": cond["mask"][i].numpy().astype(np.uint8)}
            if labels is not None:
                layers["parser"] = {"mask_data": labels[i].numpy().astype(np.uint8)}
            for layer in layers.values():
                layer["class_labels"] = classes
            known = cond["attrs_known"][i].tolist()
            values = [int(v) if k else None for v, k in zip(cond["attrs"][i].tolist(), known)]
            data.append(
                [int(cond["index"][i]), wandb.Image(picture, masks=layers or None), *values]
            )
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        for lg in loggers:
            lg.log_table(
                "fidelity/samples", columns=["item", "sample", *names], data=data, step=step
            )


__all__ = ["FidelityMonitor"]
