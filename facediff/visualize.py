"""Image helpers: tensors to uint8 arrays, coloured label maps, grids, PNG writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facediff.data.labels import MASK_PALETTE
from facediff.data.transforms import to_uint8


def to_numpy_images(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> a uint8 array (B, H, W, 3), as PIL and matplotlib show it."""
    return to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()


def colorize(mask) -> np.ndarray:
    """Label map(s) (..., H, W) -> uint8 (..., H, W, 3) with MASK_PALETTE."""
    m = mask.cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)
    return MASK_PALETTE[m]


def grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Rows of HxWx3 uint8 tiles -> one uint8 image (rows may differ in length)."""
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y : y + h, x : x + w] = tile
    return out


def save_png(image: np.ndarray, path, upscale: int = 1) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(image)
    if upscale > 1:
        im = im.resize((im.width * upscale, im.height * upscale), Image.NEAREST)
    im.save(path)
    return path
