"""Reader for the raw CelebAMask-HQ archive layout.

    CelebA-HQ-img/{i}.jpg                               1024x1024 in the real archive
    CelebAMask-HQ-mask-anno/{i // 2000}/{i:05d}_{part}.png   512x512, one binary PNG per part
    CelebAMask-HQ-attribute-anno.txt                    count, 40 names, "{i}.jpg" + 40 x (1|-1)
    CelebA-HQ-to-CelebA-mapping.txt                     idx orig_idx orig_file

Official splits. CelebA's list_eval_partition.txt assigns files 000001.jpg-162770.jpg to train,
162771.jpg-182637.jpg to val and 182638.jpg-202599.jpg to test. The mapping file gives both a
0-based `orig_idx` and the 1-based `orig_file`; we key on the file name, the one thing both files
share, so no off-by-one can creep in: train n <= 162770 < val n <= 182637 < test, with n the
number in `orig_file`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from facediff.data.labels import CELEBA_ATTRIBUTES, MASK_PARTS, select_attributes
from facediff.data.prepared import BadInputError, Sample, load_image, random_split

ATTR_FILE = "CelebAMask-HQ-attribute-anno.txt"
MAPPING_FILE = "CelebA-HQ-to-CelebA-mapping.txt"
IMAGE_DIR = "CelebA-HQ-img"
MASK_DIR = "CelebAMask-HQ-mask-anno"
OFFICIAL_LAST_TRAIN, OFFICIAL_LAST_VAL = 162770, 182637


def read_attributes(raw_dir) -> tuple[list[str], np.ndarray]:
    """Read CelebAMask-HQ-attribute-anno.txt: (the 40 names, int8 (N, 40) of 0/1).

    Rows are returned in image-index order; every index 0..N-1 must appear once.
    """
    path = Path(raw_dir) / ATTR_FILE
    if not path.is_file():
        raise BadInputError(f"{path}: attribute file not found")
    lines = text_lines(path)
    if len(lines) < 2:
        raise BadInputError(f"{path}: expected a count line and a names line, got {len(lines)}")
    try:
        count = int(lines[0].split()[0])
    except (ValueError, IndexError):
        raise BadInputError(f"{path}:1: expected the number of images, got {lines[0]!r}") from None
    names = lines[1].split()
    if len(names) != 40:
        raise BadInputError(f"{path}:2: expected 40 attribute names, got {len(names)}")
    rows = [ln for ln in lines[2:] if ln.strip()]
    if len(rows) != count:
        raise BadInputError(f"{path}: line 1 announces {count} images but {len(rows)} rows follow")
    values = np.zeros((count, 40), np.int8)
    seen = np.zeros(count, bool)
    for lineno, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 41:
            raise BadInputError(
                f"{path}:{lineno}: expected a file name and 40 values, got {len(fields) - 1} values"
            )
        try:
            idx = int(Path(fields[0]).stem)
            vals = [int(v) for v in fields[1:]]
        except ValueError:
            raise BadInputError(f"{path}:{lineno}: expected '<i>.jpg' and 40 of 1/-1") from None
        if not 0 <= idx < count or seen[idx]:
            raise BadInputError(f"{path}:{lineno}: image index {idx} out of range or repeated")
        bad = [v for v in vals if v not in (1, -1)]
        if bad:
            raise BadInputError(f"{path}:{lineno}: values must be 1 or -1, got {bad[0]}")
        values[idx] = np.array(vals) > 0
        seen[idx] = True
    return names, values


def text_lines(path: Path) -> list[str]:
    """The lines of one of the archive's text files; BadInputError where it is not text."""
    try:
        return path.read_text().splitlines()
    except UnicodeDecodeError as e:
        raise BadInputError(f"{path}: not a text file ({e})") from None


def part_path(raw_dir, index: int, part: str) -> Path:
    return Path(raw_dir) / MASK_DIR / str(index // 2000) / f"{index:05d}_{part}.png"


def merge_part_masks(raw_dir, index) -> np.ndarray:
    """Merge the part PNGs of face `index` into one label map (uint8, labels 0..18, at the part
    files' resolution). Parts are painted in the official order, a later one over an earlier one.
    A part with no file is absent from the face; RGB, greyscale, palette and 1-bit PNGs are read
    alike (a pixel belongs to the part when its first channel is over 127)."""
    label = None
    size = None
    for k, part in enumerate(MASK_PARTS, start=1):
        path = part_path(raw_dir, index, part)
        if not path.exists():
            continue
        try:
            with Image.open(path) as png:
                if png.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
                    raise BadInputError(
                        f"{path}: unsupported PNG mode {png.mode!r}; expected a binary part mask "
                        "(mode 1, L, P, RGB or RGBA)"
                    )
                png.load()
                arr = np.asarray(png.convert("L"))
        except BadInputError:
            raise
        except Exception as e:
            raise BadInputError(f"{path}: unreadable part mask ({e})") from e
        if size is None:
            size = arr.shape
            label = np.zeros(size, np.uint8)
        elif arr.shape != size:
            raise BadInputError(
                f"{path}: mask is {arr.shape[1]}x{arr.shape[0]}, expected {size[1]}x{size[0]} "
                "like the face's other part masks"
            )
        label[arr > 127] = k
    if label is None:
        raise BadInputError(f"{part_path(raw_dir, index, '*')}: face {index} has no part mask")
    return label


class CelebAMaskHQ:
    """The raw archive as a prepare source: 19-class masks and the 40 binary attributes.

    Args:
        raw_dir: the archive root.
        attributes: attribute names to keep (None: all 40, in canonical order).
        split: "official" (CelebA partition through the mapping file) or "random" (a seeded
            permutation: `train_size` then `val_size` items, the rest is the test split).
        mask_size: the expected part-mask resolution (None: whatever the files have; every mask
            of a face must agree).
    """

    name = "celebamask_hq"
    has_masks = True

    def __init__(
        self,
        raw_dir: str,
        attributes: list[str] | None = None,
        split: str = "official",
        train_size: int = 25000,
        val_size: int = 5000,
        seed: int = 0,
        mask_size: int | None = None,
    ):
        self.raw_dir = Path(raw_dir).expanduser()
        if not self.raw_dir.is_dir():
            raise BadInputError(f"data.raw_dir: {self.raw_dir} is not a directory")
        names, values = read_attributes(self.raw_dir)
        if tuple(names) != CELEBA_ATTRIBUTES:
            raise BadInputError(
                f"{self.raw_dir / ATTR_FILE}:2: attribute names differ from CelebA's"
            )
        keep = select_attributes(names, attributes, "data.attributes")
        self.attr_names = [names[k] for k in keep]
        self.values = values[:, keep]
        if split not in ("official", "random"):
            raise ValueError(f"data.split: expected 'official' or 'random', got {split!r}")
        self.split, self.train_size, self.val_size, self.seed = split, train_size, val_size, seed
        self.mask_size = mask_size

    def __len__(self) -> int:
        return len(self.values)

    def item_name(self, i: int) -> str:
        return str(self.raw_dir / IMAGE_DIR / f"{i}.jpg")

    def load(self, i: int, resolution: int) -> Sample:
        image, crop, src_hw = load_image(self.raw_dir / IMAGE_DIR / f"{i}.jpg", resolution)
        mask = merge_part_masks(self.raw_dir, i)
        if self.mask_size is not None and mask.shape != (self.mask_size, self.mask_size):
            raise BadInputError(
                f"{part_path(self.raw_dir, i, '*')}: masks are {mask.shape[1]}x{mask.shape[0]}, "
                f"expected {self.mask_size}x{self.mask_size} (data.mask_size)"
            )
        mask = np.asarray(Image.fromarray(mask).resize((resolution, resolution), Image.NEAREST))
        attrs = self.values[i].astype(np.int8) * 2 - 1  # {0,1} -> {-1,1}
        return Sample(image, mask, attrs, crop, src_hw)

    def splits(self) -> dict[str, np.ndarray]:
        n = len(self)
        if self.split == "random":
            return random_split(n, self.train_size, self.val_size, self.seed, "data.source")
        path = self.raw_dir / MAPPING_FILE
        if not path.is_file():
            raise BadInputError(f"{path}: mapping file not found (needed by data.split=official)")
        number = np.full(n, -1, np.int64)
        for lineno, line in enumerate(text_lines(path)[1:], start=2):
            fields = line.split()
            if not fields:
                continue
            try:
                idx, orig_file = int(fields[0]), fields[2]
                if not 0 <= idx < n:  # never numpy's negative indexing
                    raise IndexError(idx)
                number[idx] = int(Path(orig_file).stem)
            except (ValueError, IndexError):
                raise BadInputError(
                    f"{path}:{lineno}: expected 'idx orig_idx orig_file' with idx in [0, {n}) "
                    f"and a numbered file, got {line!r:.80}"
                ) from None
            if number[idx] < 0:
                raise BadInputError(f"{path}:{lineno}: a negative file number in {line!r:.80}")
        if (number < 0).any():
            missing = int(np.flatnonzero(number < 0)[0])
            raise BadInputError(f"{path}: no line for image {missing}")
        return {
            "train": np.flatnonzero(number <= OFFICIAL_LAST_TRAIN),
            "val": np.flatnonzero((number > OFFICIAL_LAST_TRAIN) & (number <= OFFICIAL_LAST_VAL)),
            "test": np.flatnonzero(number > OFFICIAL_LAST_VAL),
        }
