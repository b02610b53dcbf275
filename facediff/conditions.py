"""Conditions given as Python values (attribute dicts, label maps) turned into the batch dict
the conditioner reads. Shared by `facediff.api.FaceGenerator`, the interactive app and the
exported diffusers pipeline (which ships this file, so it imports nothing of facediff but the
label vocabulary)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facediff.data.labels import CONTROL_NAMES, NUM_MASK_CLASSES

# an item's control vector when the model does not record its data's: unflipped, the full crop
# box, no source size (a model records the median of its training data: `control_default`)
CONTROL_DEFAULT = (0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0)


def label_map(
    mask, res: int, resize: bool = False, num_classes: int = NUM_MASK_CLASSES
) -> torch.Tensor:
    """A (res, res) long tensor of labels 0..num_classes-1 (the model's data: 19 face classes,
    24 DeepFashion ones) from an array, tensor or PNG path; any other size only with
    `resize=True` (nearest neighbour). Errors name the input and what was expected."""
    where = f"mask={mask}" if isinstance(mask, (str, Path)) else "mask"
    if isinstance(mask, (str, Path)):
        try:
            with Image.open(mask) as im:
                mask = np.asarray(im)
        except (OSError, ValueError) as e:
            raise ValueError(f"{where}: not a readable PNG label map ({e})") from None
    m = torch.as_tensor(np.asarray(mask))
    if m.dim() != 2:
        raise ValueError(f"{where}: expected a (H, W) label map, got shape {tuple(m.shape)}")
    if m.dtype.is_floating_point:
        if not torch.isfinite(m).all() or not torch.equal(m, m.round()):
            raise ValueError(f"{where}: labels must be integers 0..{num_classes - 1}")
    elif m.dtype == torch.bool:
        raise ValueError(f"{where}: a boolean array, expected integer labels")
    if m.min() < 0 or m.max() >= num_classes:
        raise ValueError(
            f"{where}: labels {int(m.min())}..{int(m.max())}, expected 0..{num_classes - 1}"
        )
    m = m.long()
    if m.shape != (res, res):
        if not resize:
            raise ValueError(
                f"{where}: {m.shape[0]}x{m.shape[1]}, the model is {res}x{res}; pass a mask "
                "of that size, or resize_mask=True to resize it (nearest neighbour)"
            )
        img = Image.fromarray(m.numpy().astype(np.uint8)).resize((res, res), Image.NEAREST)
        m = torch.as_tensor(np.asarray(img)).long()
    return m


def same_as(name: str, value, alias: str, other):
    """One option that has two names (facediff's and diffusers'): the one given; both given
    must agree."""
    if other is None:
        return value
    if value is not None and value != other:
        raise ValueError(f"{name}={value!r} and {alias}={other!r}: give one of the two")
    return other


def values_batch(
    attr_names: list[str],
    res: int,
    attributes: dict | None = None,
    mask=None,
    num_samples: int = 1,
    resize_mask: bool = False,
    control: dict | None = None,
    control_default=None,
    num_classes: int = NUM_MASK_CLASSES,
) -> dict:
    """The batch dict for one condition repeated `num_samples` times.

    attributes: {name: value}: 1 or True present; 0, -1 (CelebA's notation) or False absent;
        None, or a name not given, unknown.
    mask: label map (H, W) of integers 0..num_classes-1 (`label_map`); None: all background
        (and the caller drops the mask condition).
    control: {name: value} over `control_default` (the model's training median; else
        `CONTROL_DEFAULT`), names from `CONTROL_NAMES`, e.g. {"flip": 1}.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples={num_samples!r}: expected an integer >= 1")
    n, a = num_samples, len(attr_names)
    attrs, known = torch.zeros(n, a), torch.zeros(n, a, dtype=torch.bool)
    for name, value in (attributes or {}).items():
        if name not in attr_names:
            raise ValueError(f"attributes: unknown name {name!r}; the model knows {attr_names}")
        if value is None:  # unknown, as if not given
            continue
        if not isinstance(value, (bool, int, float)) or value not in (-1, 0, 1):
            raise ValueError(
                f"attributes[{name!r}]={value!r}: expected 1 or True (present), 0, -1 or "
                "False (absent), or None (unknown)"
            )
        k = attr_names.index(name)
        attrs[:, k], known[:, k] = float(value > 0), True
    vector = torch.tensor(CONTROL_DEFAULT if control_default is None else control_default)
    for name, value in (control or {}).items():
        if name not in CONTROL_NAMES:
            raise ValueError(f"control: unknown name {name!r}; expected one of {CONTROL_NAMES}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"control[{name!r}]={value!r}: expected a number")
        vector[CONTROL_NAMES.index(name)] = float(value)
    batch = {"attrs": attrs, "attrs_known": known, "control": vector.expand(n, -1).clone()}
    if mask is not None:
        batch["mask"] = label_map(mask, res, resize_mask, num_classes).expand(n, -1, -1).clone()
    else:
        batch["mask"] = torch.zeros(n, res, res, dtype=torch.long)
    return batch
