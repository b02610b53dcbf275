"""Callbacks and plugins: sample grids, the run's last checkpoint (on schedule, at the end, on
SIGINT/SIGTERM), run metadata in every checkpoint, atomic checkpoint writes."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from facediff.checkpoint import atomic_save, load, write_run_record
from facediff.data.batch import condition_batch, repeat_batch, to_device
from facediff.provenance import record
from facediff.visualize import colorize, grid, save_png, to_numpy_images

log = logging.getLogger(__name__)


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
            images = to_numpy_images(pl_module.generate(batch, seed=self.seed, **kwargs))
        real = to_numpy_images(cond["image"])
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
                caption = grid_caption(cond, trainer.datamodule.attr_names, k)
                lg.log_image("samples", [str(path)], step=trainer.global_step, caption=[caption])
        log.info("sample grid: %s", path)
        return path


def grid_caption(cond: dict, attr_names: list[str], k: int) -> str:
    """What each row of a sample grid was conditioned on, for the W&B caption."""
    rows = []
    for i in range(len(cond["attrs"])):
        on = [
            n
            for n, v, known in zip(attr_names, cond["attrs"][i], cond["attrs_known"][i])
            if known and v > 0
        ]
        rows.append(f"row {i + 1}: {', '.join(on) or 'no attribute present'}")
    head = "real image" + (", its mask" if "mask" in cond else "") + f", {k} samples per row"
    return head + " | " + " | ".join(rows)


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM stopped a run after it wrote its last checkpoint; the job must stop
    with a non-zero exit (128 + the signal number), not carry on as if training had ended."""

    def __init__(self, signal_name: str, step: int, path: Path):
        self.signal_name, self.step, self.path = signal_name, step, path
        self.exit_code = 128 + int(getattr(signal, signal_name))
        super().__init__(
            f"{signal_name} received: stopped at step {step}; resume with ckpt_path={path}"
        )


class LastCheckpoint(L.Callback):
    """The run's one `<dirpath>/last.ckpt`, always written at a step boundary: after the
    optimizer, the LR schedule, the EMA and the data position have all advanced, so a run
    resumed from it continues exactly as if it had not stopped. Written every `every_n_steps`,
    when `trainer.max_steps` is reached, and on SIGINT or SIGTERM (then the run stops; the
    caller turns that into a non-zero exit). After an exception the previous one stands.

    A run a callback stops at a step's end (trainer.max_time's Timer, which facediff's fit
    places first) saves that step too.

    SIGINT gets a handler of its own (instead of a KeyboardInterrupt in the middle of a step);
    SIGTERM goes through Lightning's handler (`trainer.received_sigterm`). A second SIGINT
    stops at once."""

    def __init__(
        self, dirpath: str, every_n_steps: int = 1000, signals: tuple[str, ...] = ("SIGINT",)
    ):
        self.dirpath, self.every_n_steps, self.signals = Path(dirpath), every_n_steps, signals
        self.received: str | None = None
        self.saved_step = -1
        self._previous = {}

    @property
    def path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def _handler(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name
        for name, prev in self._previous.items():  # a second signal acts at once
            signal.signal(getattr(signal, name), prev)

    def on_fit_start(self, trainer, pl_module) -> None:
        self.received, self.saved_step = None, -1
        if trainer.is_global_zero:
            for name in self.signals:
                sig = getattr(signal, name)
                self._previous[name] = signal.getsignal(sig)
                signal.signal(sig, self._handler)

    def interrupted(self, trainer) -> str | None:
        """The signal that stopped the run, if one did."""
        return self.received or ("SIGTERM" if trainer.received_sigterm else None)

    def save(self, trainer, why: str | None = None) -> None:
        if trainer.fast_dev_run or trainer.global_step == self.saved_step:
            return
        # all ranks; rank 0 writes the full resumable state (optimizer, loops, callbacks:
        # Lightning's default); every load is checkpoint.load, weights_only=True
        trainer.save_checkpoint(self.path)
        self.saved_step = trainer.global_step
        if why:
            log.warning(
                "%s received: checkpoint written to %s (step %d); stopping",
                why,
                self.path,
                trainer.global_step,
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, why = trainer.global_step, self.interrupted(trainer)
        if why:
            self.save(trainer, why)
            trainer.should_stop = True
        elif (
            (self.every_n_steps and step % self.every_n_steps == 0)
            or (trainer.max_steps > 0 and step >= trainer.max_steps)
            or trainer.should_stop  # asked by a callback before this one (max_time's Timer)
        ):
            self.save(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        # SIGTERMException is raised between steps (the state is whole): save that step. Any
        # other exception (a second SIGINT's KeyboardInterrupt among them) may have stopped a
        # step halfway: nothing is saved, the last whole last.ckpt stands.
        if isinstance(exception, SIGTERMException):
            self.save(trainer, self.interrupted(trainer) or "SIGTERM")
        elif self.received:
            log.warning(
                "a second %s stopped step %d halfway: not saved; %s holds step %d, whole",
                self.received,
                trainer.global_step,
                self.path,
                self.saved_step,
            )

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for name, prev in self._previous.items():
            signal.signal(getattr(signal, name), prev)
        self._previous = {}


class RunInfo(L.Callback):
    """Writes what a run is (its resolved config, its data: resolution, attribute names, mask
    classes, source and content hash, and the precision it trained in) into every checkpoint
    as `checkpoint["facediff"]`: resume, sampling and the evaluator cache check it."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        write_run_record(checkpoint, pl_module.build_config, pl_module.data_info, record())


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint files go through `facediff.checkpoint`: writes through
    `atomic_save` (a temp file, fsync, rename; a kill in the middle of a save leaves the
    previous file whole), and the resume's read through `load` (CRC of every record checked,
    tensors and plain containers only), like every other read, at the moment it is read."""

    def __init__(self, preloaded: dict | None = None):
        super().__init__()
        self._preloaded = dict(preloaded or {})  # {path: checkpoint} read once already

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        atomic_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        if str(path) in self._preloaded:  # facediff-train read it for its checks: not again
            return self._preloaded.pop(str(path))
        return load(path, "a facediff-train checkpoint to resume")
