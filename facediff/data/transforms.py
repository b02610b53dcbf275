"""The pixel conventions of facediff, in one place: images are float (B, 3, H, W) in [-1, 1]
inside the library and uint8 at its edges (prepared data, generated folders, PNGs), and a
horizontal flip mirrors an image, its label map (left and right classes swapped) and its crop
box together."""

from __future__ import annotations

import numpy as np
import torch

from facediff.data.labels import flip_lut

_FLIP_LUT = torch.from_numpy(flip_lut())


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (any layout) -> float in [-1, 1]."""
    return images.float() / 127.5 - 1


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (any layout) -> uint8, rounded, in the same layout and device."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def hflip(image: torch.Tensor, mask: torch.Tensor | None, lut: torch.Tensor | None = None):
    """Mirror an image (..., H, W) and its label map, swapping the left/right classes (`lut`:
    the data set's `labels.flip_lut`; the face's by default)."""
    image = image.flip(-1)
    if mask is not None:
        mask = (_FLIP_LUT if lut is None else lut).to(mask.device)[mask.flip(-1)]
    return image, mask


def hflip_crop(crop: np.ndarray) -> np.ndarray:
    """The crop box (x0, y0, x1, y1, relative to the source image) of a mirrored item."""
    return np.array([1 - crop[2], crop[1], 1 - crop[0], crop[3]], np.float32)


__all__ = ["hflip", "hflip_crop", "to_float", "to_uint8"]
