"""Small raw data sets written in the real on-disk layouts."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from facediff.data.labels import CELEBA_ATTRIBUTES, MAAD_ATTRIBUTES, MASK_CLASSES


def box(size, y0, y1, x0, x1):
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m


def write_celebamask(root: Path, n: int = 3, image_size: int = 32, mask_size: int = 16):
    """n faces: images at image_size, part masks at mask_size (half), RGB and greyscale PNGs,
    overlapping parts, parts missing. Returns (expected label maps, attribute values 0/1)."""
    root = Path(root)
    (root / "CelebA-HQ-img").mkdir(parents=True)
    (root / "CelebAMask-HQ-mask-anno" / "0").mkdir(parents=True)
    rng = np.random.default_rng(0)
    s = mask_size
    expected = []
    for i in range(n):
        img = rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "CelebA-HQ-img" / f"{i}.jpg", quality=95)
        parts = {
            "skin": box(s, 2, 14, 2, 14),
            "nose": box(s, 6, 10, 7, 9),
            "hair": box(s, 0, 5, 0, 16),
        }
        if i != 1:  # face 1 has no eyes: absent parts have no file
            parts["l_eye"] = box(s, 5, 7, 3, 6)
            parts["r_eye"] = box(s, 5, 7, 10, 13)
        if i == 2:
            parts["cloth"] = box(s, 13, 16, 0, 16)
        label = np.zeros((s, s), np.uint8)
        for k, name in enumerate(MASK_CLASSES[1:], start=1):  # the official merge order
            if name in parts:
                label[parts[name]] = k
        expected.append(label)
        for j, (name, m) in enumerate(parts.items()):
            arr = m.astype(np.uint8) * 255
            png = Image.fromarray(np.stack([arr] * 3, -1)) if j % 2 == 0 else Image.fromarray(arr)
            png.save(root / "CelebAMask-HQ-mask-anno" / "0" / f"{i:05d}_{name}.png")
    values = rng.integers(0, 2, (n, 40)).astype(np.int8)
    lines = [str(n), " ".join(CELEBA_ATTRIBUTES)]
    lines += [f"{i}.jpg " + " ".join("1" if v else "-1" for v in values[i]) for i in range(n)]
    (root / "CelebAMask-HQ-attribute-anno.txt").write_text("\n".join(lines) + "\n")
    files = [1, 170000, 190000]  # one face in each official partition
    mapping = ["idx orig_idx orig_file"] + [
        f"{i} {files[i % 3] - 1} {files[i % 3]:06d}.jpg" for i in range(n)
    ]
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(mapping) + "\n")
    return expected, values


def write_maad(root: Path, n: int = 12, as_zip: bool = False):
    """A MAAD_Face.csv with unknowns and VGGFace2 images (folder or zip). Returns values."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    values = rng.integers(-1, 2, (n, 47)).astype(np.int8)
    names = [f"n{100 + i // 4:06d}/{i % 4:04d}_01.jpg" for i in range(n)]
    rows = ["Filename,Identity," + ",".join(MAAD_ATTRIBUTES)]
    rows += [f"{f},{100 + i // 4}," + ",".join(map(str, values[i])) for i, f in enumerate(names)]
    (root / "MAAD_Face.csv").write_text("\n".join(rows) + "\n")
    images = {}
    for f in names:
        im = Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))  # not square
        images[f] = im
    if as_zip:
        with zipfile.ZipFile(root / "vggface2.zip", "w") as z:
            for f, im in images.items():
                p = root / "tmp.jpg"
                im.save(p)
                z.write(p, f"train/{f}")
        return root / "MAAD_Face.csv", root / "vggface2.zip", values, names
    for f, im in images.items():
        p = root / "vggface2" / "train" / f
        p.parent.mkdir(parents=True, exist_ok=True)
        im.save(p)
    return root / "MAAD_Face.csv", root / "vggface2", values, names
