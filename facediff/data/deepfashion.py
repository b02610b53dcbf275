"""Reader for DeepFashion-MultiModal's official layout (Jiang et al. 2022, Text2Human).

    images/<name>.jpg                        750 x 1101 in the real set
    segm/<stem>_segm.png                     one channel, labels 0..23 (DEEPFASHION_CLASSES)
    labels/shape/shape_anno_all.txt          <name> + 12 fields (SHAPE_FIELDS)
    labels/texture/fabric_ann.txt            <name> <upper> <lower> <outer>, 0..7 (7 = NA)
    labels/texture/pattern_ann.txt           the same, colour pattern
    captions.json                            {name: caption} (not read)

An item needs an image, a parsing mask and its shape labels; the others are left out and
counted in the prepare report (`source_report`). A missing fabric or pattern line makes those
labels unknown.

Categorical labels become one binary attribute per value, named after the official README
(`sleeve=long`, `fabric_upper=denim`); a field's NA value makes every attribute of that field
unknown (the prepared `known` mask).

Square images by padding: the tall image is padded left and right to a square, the image with
its edge pixels and the parsing mask with background, so the whole person stays in the picture
(`crop` records the padded box in source fractions: x0 < 0 and x1 > 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from facediff.data.celebamask import text_lines
from facediff.data.prepared import BadInputError, Sample, random_split

# the official label order of segm/*.png
DEEPFASHION_CLASSES: tuple[str, ...] = (
    "background", "top", "outer", "skirt", "dress", "pants", "leggings", "headwear",
    "eyeglass", "neckwear", "belt", "footwear", "bag", "hair", "face", "skin", "ring",
    "wrist_wearing", "socks", "gloves", "necklace", "rompers", "earrings", "tie",
)  # fmt: skip

# shape_anno_all.txt's 12 fields, each with its values in order; the last value is NA
SHAPE_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sleeve", ("sleeveless", "short", "medium", "long", "not_long", "NA")),
    ("lower_length", ("three_point", "medium_short", "three_quarter", "long", "NA")),
    ("socks", ("no", "socks", "leggings", "NA")),
    ("hat", ("no", "yes", "NA")),
    ("glasses", ("no", "eyeglasses", "sunglasses", "in_hand_or_clothes", "NA")),
    ("neckwear", ("no", "yes", "NA")),
    ("wrist_wearing", ("no", "yes", "NA")),
    ("ring", ("no", "yes", "NA")),
    ("waist_accessories", ("no", "belt", "clothing", "hidden", "NA")),
    ("neckline", ("v_shape", "square", "round", "standing", "lapel", "suspenders", "NA")),
    ("cardigan", ("yes", "no", "NA")),
    ("covers_navel", ("no", "yes", "NA")),
)
FABRICS = ("denim", "cotton", "leather", "furry", "knitted", "chiffon", "other", "NA")
PATTERNS = ("floral", "graphic", "striped", "pure_color", "lattice", "other", "color_block", "NA")
GARMENTS = ("upper", "lower", "outer")
TEXTURE_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
    (f"{kind}_{g}", values) for kind, values in (("fabric", FABRICS), ("pattern", PATTERNS))
    for g in GARMENTS
)  # fmt: skip
FIELDS = SHAPE_FIELDS + TEXTURE_FIELDS
# one binary attribute per value but NA: "sleeve=long"
DEEPFASHION_ATTRIBUTES: tuple[str, ...] = tuple(
    f"{field}={v}" for field, values in FIELDS for v in values[:-1]
)

SHAPE_FILE = "labels/shape/shape_anno_all.txt"
FABRIC_FILE = "labels/texture/fabric_ann.txt"
PATTERN_FILE = "labels/texture/pattern_ann.txt"


def read_label_file(path: Path, fields, required: bool) -> dict[str, list[int]]:
    """{image name: values} of one label file, each line `<name> v1 .. vk` with every value in
    its field's range; BadInputError naming the file and line otherwise."""
    if not path.is_file():
        if required:
            raise BadInputError(f"{path}: label file not found")
        return {}
    out = {}
    for lineno, line in enumerate(text_lines(path), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(fields) + 1:
            raise BadInputError(
                f"{path}:{lineno}: expected an image name and {len(fields)} values, got "
                f"{len(parts) - 1} values"
            )
        try:
            values = [int(v) for v in parts[1:]]
        except ValueError:
            raise BadInputError(
                f"{path}:{lineno}: values must be integers: {line!r:.80}"
            ) from None
        for (name, allowed), v in zip(fields, values):
            if not 0 <= v < len(allowed):
                raise BadInputError(
                    f"{path}:{lineno}: {name}={v} out of range 0..{len(allowed) - 1} "
                    f"({len(allowed) - 1} = NA)"
                )
        out[parts[0]] = values
    return out


def one_hot_labels(values: list[int], fields=FIELDS) -> np.ndarray:
    """int8 (A,) in {-1, 0, 1} over DEEPFASHION_ATTRIBUTES: 1 for the field's value, -1 for its
    other values, 0 (unknown) for every value of a field that is NA or missing (None)."""
    out = []
    for (_, allowed), v in zip(fields, values):
        k = len(allowed) - 1  # values without NA
        if v is None or v == k:
            out += [0] * k
        else:
            out += [1 if j == v else -1 for j in range(k)]
    return np.asarray(out, np.int8)


def pad_to_square(image: Image.Image, mask: np.ndarray, resolution: int):
    """The documented rule: pad the shorter side to a square (image: edge pixels; mask:
    background), then resize (image Lanczos, mask nearest). Returns the arrays, the crop box in
    source fractions and the source's (height, width)."""
    w, h = image.size
    s = max(w, h)
    left, top = (s - w) // 2, (s - h) // 2
    pad = ((top, s - h - top), (left, s - w - left))
    img = np.pad(np.asarray(image.convert("RGB")), pad + ((0, 0),), mode="edge")
    msk = np.pad(mask, pad, constant_values=0)
    img = Image.fromarray(img).resize((resolution, resolution), Image.LANCZOS, reducing_gap=None)
    msk = Image.fromarray(msk).resize((resolution, resolution), Image.NEAREST)
    crop = (-left / w, -top / h, (s - left) / w, (s - top) / h)
    return np.asarray(img, np.uint8), np.asarray(msk, np.uint8), crop, (h, w)


class DeepFashionMM:
    """DeepFashion-MultiModal as a prepare source: 24 parsing classes, 80 binary attributes
    from the categorical shape, fabric and pattern labels.

    Args:
        raw_dir: the data set's root (images/, segm/, labels/).
        split: "random" (a seeded permutation: train_size, then val_size, the rest is test).
        train_size, val_size: None: 80% and 10% of the items.
    """

    name = "deepfashion_mm"
    has_masks = True
    mask_classes = DEEPFASHION_CLASSES
    flip_pairs: tuple = ()  # no left/right classes

    def __init__(
        self,
        raw_dir: str,
        split: str = "random",
        train_size: int | None = None,
        val_size: int | None = None,
        seed: int = 0,
    ):
        self.raw_dir = Path(raw_dir).expanduser()
        if not self.raw_dir.is_dir():
            raise BadInputError(f"data.raw_dir: {self.raw_dir} is not a directory")
        if split != "random":
            raise ValueError(f"data.source.split: expected 'random', got {split!r}")
        images_dir = self.raw_dir / "images"
        if not images_dir.is_dir():
            raise BadInputError(f"{images_dir}: images folder not found")
        shape = read_label_file(self.raw_dir / SHAPE_FILE, SHAPE_FIELDS, required=True)
        k = len(GARMENTS)  # TEXTURE_FIELDS: the fabric file's three fields, then the pattern's
        fabric = read_label_file(self.raw_dir / FABRIC_FILE, TEXTURE_FIELDS[:k], required=False)
        pattern = read_label_file(self.raw_dir / PATTERN_FILE, TEXTURE_FIELDS[k:], required=False)
        names = sorted(p.name for p in images_dir.glob("*.jpg"))
        with_segm = [n for n in names if self._segm(n).is_file()]
        without_labels = [n for n in with_segm if n not in shape]
        self.items = [n for n in with_segm if n in shape]
        if not self.items:
            raise BadInputError(
                f"{self.raw_dir}: no item has an image, a parsing mask (segm/<stem>_segm.png) "
                f"and shape labels ({SHAPE_FILE})"
            )
        self.labels = [
            shape[n] + fabric.get(n, [None] * 3) + pattern.get(n, [None] * 3) for n in self.items
        ]
        self.report = {
            "images": len(names),
            "kept": len(self.items),
            "without_parsing_mask": len(names) - len(with_segm),
            "without_shape_labels": len(without_labels),
            "without_texture_labels": sum(n not in fabric or n not in pattern for n in self.items),
        }
        self.attr_names = list(DEEPFASHION_ATTRIBUTES)
        n = len(self.items)
        self.train_size = int(0.8 * n) if train_size is None else train_size
        self.val_size = int(0.1 * n) if val_size is None else val_size
        self.seed = seed

    def _segm(self, name: str) -> Path:
        return self.raw_dir / "segm" / f"{Path(name).stem}_segm.png"

    def __len__(self) -> int:
        return len(self.items)

    def item_name(self, i: int) -> str:
        return str(self.raw_dir / "images" / self.items[i])

    def load(self, i: int, resolution: int) -> Sample:
        path, segm = Path(self.item_name(i)), self._segm(self.items[i])
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
            with Image.open(segm) as sm:
                mask = np.asarray(sm)
        except OSError as e:
            raise BadInputError(f"{path} / {segm}: unreadable ({e})") from e
        if mask.ndim != 2:
            raise BadInputError(f"{segm}: expected one channel of labels, got shape {mask.shape}")
        if mask.shape != (image.size[1], image.size[0]):
            raise BadInputError(
                f"{segm}: {mask.shape[1]}x{mask.shape[0]}, its image is "
                f"{image.size[0]}x{image.size[1]}"
            )
        if mask.max() >= len(DEEPFASHION_CLASSES):
            raise BadInputError(
                f"{segm}: label {int(mask.max())}, expected 0..{len(DEEPFASHION_CLASSES) - 1}"
            )
        img, msk, crop, hw = pad_to_square(image, mask.astype(np.uint8), resolution)
        return Sample(img, msk, one_hot_labels(self.labels[i]), crop, hw)

    def splits(self) -> dict[str, np.ndarray]:
        return random_split(len(self), self.train_size, self.val_size, self.seed, "data.source")


__all__ = [
    "DEEPFASHION_ATTRIBUTES",
    "DEEPFASHION_CLASSES",
    "DeepFashionMM",
    "FIELDS",
    "one_hot_labels",
    "pad_to_square",
    "read_label_file",
]
