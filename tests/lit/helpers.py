"""Callbacks used by the tests to inject faults into a real training run."""

from __future__ import annotations

import os
import signal

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer


class SendSignalAt(L.Callback):
    """Sends `signal_name` to this process after training step `step`."""

    def __init__(self, step: int, signal_name: str = "SIGTERM"):
        self.step, self.signal_name = step, signal_name

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal_name))


class TimeUpAt(Timer):
    """trainer.max_time's Timer (lightning's), its time up after training step `step`."""

    def __init__(self, step: int):
        super().__init__(duration="00:01:00:00", interval="step")
        self.step = step

    def _check_time_remaining(self, trainer) -> None:
        trainer.should_stop = trainer.should_stop or trainer.global_step >= self.step


class RaiseAt(L.Callback):
    """Raises a RuntimeError at the start of training step `step` + 1 (after `step` steps)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"injected failure at step {self.step}")


class PoisonSteps(L.Callback):
    """Makes the loss (kind="loss") or the gradients (kind="grad") non-finite at the listed
    batch indices, counted from the start of this fit (`at` may be "all")."""

    def __init__(self, at, kind: str = "loss", rank: int | None = None):
        self.at, self.kind, self.batches, self.rank = at, kind, 0, rank
        self._hook = None

    def _poisoned(self) -> bool:
        return self.at == "all" or self.batches in self.at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.rank is not None and trainer.global_rank != self.rank:  # this rank only
            return
        if not self._poisoned():
            return
        if self.kind == "loss":
            batch["image"][0, 0, 0, 0] = float("nan")
        else:
            p = next(pl_module.denoiser.parameters())
            self._hook = p.register_hook(lambda g: g * float("nan"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.batches += 1


def all_finite(state_dict) -> bool:
    return all(torch.isfinite(v).all() for v in state_dict.values() if v.is_floating_point())


def records(path):
    """The protobuf records of an offline run's .wandb file (W&B's LevelDB-style log: a 7-byte
    header, then 32 KiB blocks of chunks: CRC (4), length (2), type (1: full, 2: first,
    3: middle, 4: last), data)."""
    from wandb.proto import wandb_internal_pb2

    raw, block, pos, pending = path.read_bytes(), 32768, 7, b""
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a chunk header: padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(raw[pos + 4 : pos + 6], "little"), raw[pos + 6]
        if kind == 0 and length == 0:
            break
        data, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = data if kind in (1, 2) else pending + data
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
