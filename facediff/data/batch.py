"""Helpers on the batch dict (see `facediff.data`): fixed condition batches for grids, fidelity
and evaluation, repeated and moved as a whole. Shared by the callbacks and the evaluation."""

from __future__ import annotations

from torch.utils.data import default_collate


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


__all__ = ["condition_batch", "repeat_batch", "to_device"]
