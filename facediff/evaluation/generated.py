"""A folder of generated faces with their conditions: what facediff-sample and
facediff-evaluate write, and what facediff-evaluate scores (`images_dir=`).

    samples/00000.png ...        RGB, one file per image, in row order
    conditions.npz               per image: index (the item of the reference split whose
                                 conditions it was given), sample (0 for the first sample of a
                                 condition, 1.. for more), attrs, attrs_known, mask (optional),
                                 and attr_names
    generated.json               data_root (the prepared data), split, resolution, and how the
                                 images were made

Images from another model can be scored the same way: write the PNGs and a conditions.npz
that indexes the split of a prepared data set.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CONDITIONS = "conditions.npz"
META = "generated.json"


def write_generated(out_dir, images: torch.Tensor, cond: dict, meta: dict) -> Path:
    """images: uint8 (N, 3, H, W); cond: per-image tensors with at least index, sample, attrs,
    attrs_known (and mask); meta: data_root, split, attr_names, ..."""
    out = Path(out_dir)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img.permute(1, 2, 0).cpu().numpy()).save(out / "samples" / f"{i:05d}.png")
    arrays = {
        "index": cond["index"].numpy().astype(np.int64),
        "sample": cond["sample"].numpy().astype(np.int64),
        "attrs": cond["attrs"].numpy().astype(np.float32),
        "attrs_known": cond["attrs_known"].numpy().astype(bool),
        "attr_names": np.array(meta["attr_names"]),
    }
    if "mask" in cond:
        arrays["mask"] = cond["mask"].numpy().astype(np.uint8)
    np.savez_compressed(out / CONDITIONS, **arrays)
    (out / META).write_text(json.dumps(meta, indent=1))
    return out


def read_generated(directory) -> tuple[torch.Tensor, dict, dict]:
    """(uint8 images (N, 3, H, W), per-image conditions, meta) of a generated folder."""
    d = Path(directory)
    for name in (CONDITIONS, META):
        if not (d / name).is_file():
            raise FileNotFoundError(
                f"images_dir={d}: {d / name} is missing (a folder written by facediff-sample "
                "from_split=... or facediff-evaluate, or see facediff/evaluation/generated.py)"
            )
    meta = json.loads((d / META).read_text())
    for key in ("split", "resolution"):
        if key not in meta:
            raise ValueError(f"{d / META}: no '{key}' (the reference split; the image size)")
    z = np.load(d / CONDITIONS, allow_pickle=False)
    for key in ("index", "sample", "attrs", "attrs_known", "attr_names"):
        if key not in z.files:
            raise ValueError(f"{d / CONDITIONS}: no '{key}' array (it has {sorted(z.files)})")
    files = sorted((d / "samples").glob("*.png"))
    n = len(z["index"])
    if len(files) != n:
        raise ValueError(f"{d / 'samples'}: {len(files)} PNG files, but {CONDITIONS} has {n} rows")
    images = []
    for f in files:
        img = np.asarray(Image.open(f).convert("RGB"))
        if images and img.shape != images[0].shape:
            raise ValueError(f"{f}: {img.shape[:2]} pixels, the others {images[0].shape[:2]}")
        images.append(img)
    images = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    cond = {
        "index": torch.from_numpy(z["index"]),
        "sample": torch.from_numpy(z["sample"]),
        "attrs": torch.from_numpy(z["attrs"]),
        "attrs_known": torch.from_numpy(z["attrs_known"]),
    }
    if "mask" in z.files:
        cond["mask"] = torch.from_numpy(z["mask"]).long()
        if cond["mask"].shape[-2:] != images.shape[-2:]:
            raise ValueError(
                f"{d / CONDITIONS}: masks of {tuple(cond['mask'].shape[-2:])} pixels, "
                f"images of {tuple(images.shape[-2:])}"
            )
    meta["attr_names"] = [str(a) for a in z["attr_names"]]
    return images, cond, meta
