"""Class and attribute vocabularies of the supported data sets, and the horizontal-flip pairs."""

from __future__ import annotations

import numpy as np

# CelebAMask-HQ label order. This is also the merge order of the part PNGs: a later part is
# painted over an earlier one (the official g_mask script does the same).
MASK_CLASSES: tuple[str, ...] = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear",
    "r_ear", "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)  # fmt: skip
NUM_MASK_CLASSES = len(MASK_CLASSES)

# The control metadata vector of every item (arXiv 2411.03177): the flip flag, the crop box in
# the source image (fractions), the source image's height and width / 1024
CONTROL_NAMES = ("flip", "crop_x0", "crop_y0", "crop_x1", "crop_y1", "source_h", "source_w")
# the part files of CelebAMask-HQ-mask-anno: every class but the background
MASK_PARTS: tuple[str, ...] = MASK_CLASSES[1:]

# a horizontal flip swaps these classes (left <-> right eye, brow, ear)
FLIP_PAIRS: tuple[tuple[str, str], ...] = (
    ("l_eye", "r_eye"),
    ("l_brow", "r_brow"),
    ("l_ear", "r_ear"),
)


def mask_vocabulary(classes) -> tuple[str, ...]:
    """A data set's mask classes as recorded (meta.json, a checkpoint's data_info); the face's
    where none are (a set or a checkpoint from before vocabularies were recorded)."""
    return tuple(classes) if classes else MASK_CLASSES


def flip_lut(classes=MASK_CLASSES, pairs=FLIP_PAIRS) -> np.ndarray:
    """Look-up table mapping each label to its label after a horizontal flip: the class
    vocabulary and its left/right pairs of a data set (the face's by default)."""
    lut = np.arange(len(classes), dtype=np.int64)
    for a, b in pairs:
        ia, ib = list(classes).index(a), list(classes).index(b)
        lut[ia], lut[ib] = ib, ia
    return lut


# The 40 CelebA attributes in the canonical order of list_attr_celeba.txt and of
# CelebAMask-HQ-attribute-anno.txt.
CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup",
    "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns",
    "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip

# The 47 MAAD-Face attributes in the column order of MAAD_Face.csv (after Filename, Identity).
MAAD_ATTRIBUTES: tuple[str, ...] = (
    "Male", "Young", "Middle_Aged", "Senior", "Asian", "White", "Black", "Rosy_Cheeks",
    "Shiny_Skin", "Bald", "Wavy_Hair", "Receding_Hairline", "Bangs", "Sideburns", "Black_Hair",
    "Blond_Hair", "Brown_Hair", "Gray_Hair", "No_Beard", "Mustache", "5_o_Clock_Shadow",
    "Goatee", "Oval_Face", "Square_Face", "Round_Face", "Double_Chin", "High_Cheekbones",
    "Chubby", "Obstructed_Forehead", "Fully_Visible_Forehead", "Brown_Eyes", "Bags_Under_Eyes",
    "Bushy_Eyebrows", "Arched_Eyebrows", "Mouth_Closed", "Smiling", "Big_Lips", "Big_Nose",
    "Pointy_Nose", "Heavy_Makeup", "Wearing_Hat", "Wearing_Earrings", "Wearing_Necktie",
    "Wearing_Lipstick", "No_Eyewear", "Eyeglasses", "Attractive",
)  # fmt: skip

assert len(MASK_CLASSES) == 19 and len(CELEBA_ATTRIBUTES) == 40 and len(MAAD_ATTRIBUTES) == 47

# a colour per mask class, for visualising label maps (background black)
MASK_PALETTE = np.array(
    [
        [0, 0, 0], [204, 160, 130], [255, 140, 0], [120, 120, 255], [0, 200, 255],
        [0, 120, 255], [120, 60, 0], [170, 90, 20], [255, 0, 150], [200, 0, 255],
        [255, 255, 0], [255, 60, 60], [180, 0, 0], [60, 40, 20], [0, 160, 80],
        [255, 255, 255], [160, 255, 160], [140, 100, 80], [60, 80, 160],
        # more for larger vocabularies (DeepFashion-MultiModal's 24 classes)
        [255, 120, 200], [0, 255, 120], [120, 0, 120], [200, 200, 120], [0, 90, 90],
        [90, 0, 0], [255, 180, 0], [120, 200, 255], [80, 80, 0], [180, 120, 255],
        [0, 0, 120], [150, 150, 150], [255, 220, 180],
    ],
    dtype=np.uint8,
)  # fmt: skip


def select_attributes(
    available: tuple[str, ...] | list[str], wanted: list[str] | None, where: str
) -> list[int]:
    """Indices of `wanted` attribute names in `available` (all of them when `wanted` is None).

    Raises a ValueError naming `where` (a file or config option) and the valid names.
    """
    available = list(available)
    if wanted is None:
        return list(range(len(available)))
    missing = [w for w in wanted if w not in available]
    if missing:
        raise ValueError(
            f"{where}: unknown attribute name(s) {missing}; this data set has: {available}"
        )
    return [available.index(w) for w in wanted]
