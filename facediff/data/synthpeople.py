"""SynthPeople: a procedural, seeded person data set in DeepFashion-MultiModal's official layout.

Simple standing figures whose garments follow their categorical labels: the sleeve length
decides how much of the arm the top covers, the lower length the pants' or skirt's reach, a hat,
glasses, neckwear, a belt, wrist wear and a ring appear when labelled, the fabric sets a
garment's base colour and texture and the pattern its print. Every item is drawn from its own
generator (`numpy.random.default_rng([seed, index])`). `write_synthpeople` writes the official
files (images/, segm/, labels/, captions.json), some items without a parsing mask or labels as
in the real set, and `SynthPeople` reads them through the very reader the real data goes
through (`facediff.data.deepfashion.DeepFashionMM`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from facediff.data.deepfashion import (
    DEEPFASHION_CLASSES,
    FABRIC_FILE,
    FABRICS,
    PATTERN_FILE,
    PATTERNS,
    SHAPE_FIELDS,
    SHAPE_FILE,
    DeepFashionMM,
)
from facediff.data.prepared import BadInputError, data_lock, remove_stale_tmp

log = logging.getLogger(__name__)
C = {name: i for i, name in enumerate(DEEPFASHION_CLASSES)}
FABRIC_RGB = {  # base colour of each fabric (the pattern prints on it)
    "denim": (60, 90, 150), "cotton": (200, 190, 170), "leather": (60, 40, 30),
    "furry": (170, 130, 90), "knitted": (150, 60, 60), "chiffon": (230, 200, 220),
    "other": (90, 140, 90),
}  # fmt: skip
GENERATED = "synthpeople.json"


def draw_labels(rng: np.random.Generator) -> list[int]:
    """The 12 shape values and the fabric and pattern of upper, lower, outer (the last value of
    each field is NA): a person's labels, NA where the garment is absent."""
    sleeve = int(rng.integers(0, 4))
    lower_length = int(rng.integers(0, 4))
    socks = int(rng.integers(0, 3))
    hat, neckwear, wrist, ring = (int(rng.random() < p) for p in (0.3, 0.25, 0.3, 0.2))
    glasses = int(rng.choice([0, 1, 2], p=[0.6, 0.25, 0.15]))
    waist = int(rng.random() < 0.35)  # 0 no, 1 belt
    neckline = int(rng.integers(0, 6))
    cardigan = int(rng.random() < 0.3)  # drawn: 1 = an outer garment
    navel = int(rng.random() < 0.8)  # 1: covered
    shape = [sleeve, lower_length, socks, hat, glasses, neckwear, wrist, ring, waist, neckline]
    shape += [0 if cardigan else 1, navel]  # official: cardigan 0 = yes, 1 = no
    fabric = [int(rng.integers(0, 7)), int(rng.integers(0, 7))]
    pattern = [int(rng.integers(0, 7)), int(rng.integers(0, 7))]
    fabric.append(int(rng.integers(0, 7)) if cardigan else 7)  # outer: NA without one
    pattern.append(int(rng.integers(0, 7)) if cardigan else 7)
    return shape + fabric + pattern


def _texture(rng, h: int, w: int, fabric: str, pattern: str) -> np.ndarray:
    """(h, w, 3) float colours of a garment: the fabric's colour and grain, the pattern's
    print."""
    base = np.array(FABRIC_RGB[fabric], np.float32) * rng.uniform(0.85, 1.15)
    img = np.broadcast_to(base, (h, w, 3)).copy()
    grain = {"furry": 30, "knitted": 12, "denim": 10, "leather": 4}.get(fabric, 6)
    img += rng.normal(0, grain, (h, w, 1))
    if fabric == "knitted":
        img[::2] *= 0.85
    yy, xx = np.mgrid[0:h, 0:w]
    ink = rng.uniform(0, 255, 3).astype(np.float32)
    if pattern == "striped":
        img[(yy // 3) % 2 == 0] = ink
    elif pattern == "lattice":
        img[(yy % 5 == 0) | (xx % 5 == 0)] = ink
    elif pattern == "floral":
        img[((yy * 7 + xx * 13) % 17 < 2) & ((yy // 4 + xx // 4) % 2 == 0)] = ink
    elif pattern == "graphic":
        img[h // 4 : h // 2, w // 4 : 3 * w // 4] = ink
    elif pattern == "color_block":
        img[:, : w // 2] = ink
    elif pattern == "other":
        img += rng.normal(0, 40, (h, w, 3))
    return img


def render_person(rng: np.random.Generator, labels: list[int], width: int, height: int):
    """uint8 (H, W, 3) image and uint8 (H, W) parsing mask of a figure wearing `labels`."""
    mask = np.zeros((height, width), np.uint8)
    s = height / 140  # the layout is drawn on a 96 x 140 grid, scaled
    cx = width / 2 + rng.uniform(-4, 4) * s

    def box(x0, y0, x1, y1, label):
        mask[max(0, int(y0 * s)) : int(y1 * s), max(0, int(cx + x0 * s)) : int(cx + x1 * s)] = (
            label
        )

    sleeve, lower_len, socks, hat, glasses, neckwear, wrist, ring, waist = labels[:9]
    cardigan, navel = labels[10] == 0, labels[11] == 1
    # legs and arms in skin first, garments over them
    box(-9, 74, -2, 128, C["skin"])
    box(2, 74, 9, 128, C["skin"])
    box(-20, 36, -13, 82, C["skin"])
    box(13, 36, 20, 82, C["skin"])
    box(-4, 28, 4, 36, C["skin"])  # neck
    yy, xx = np.mgrid[0:height, 0:width]
    head = ((yy - 19 * s) ** 2 + (xx - cx) ** 2) < (10 * s) ** 2
    mask[head] = C["face"]
    mask[head & (yy < 14 * s)] = C["hair"]
    if hat:
        box(-11, 3, 11, 11, C["headwear"])
    if glasses:
        box(-8, 17, 8, 21, C["eyeglass"])
    box(-13, 34, 13, 76, C["top"])  # the top, its sleeves to the sleeve length
    arm_end = {0: 36, 1: 48, 2: 62, 3: 80}[sleeve]
    box(-20, 34, -13, arm_end, C["top"])
    box(13, 34, 20, arm_end, C["top"])
    if not navel:
        box(-13, 66, 13, 72, C["skin"])
    if cardigan:
        box(-15, 33, -6, 80, C["outer"])
        box(6, 33, 15, 80, C["outer"])
    if neckwear:
        box(-3, 34, 3, 46, C["neckwear"])
    if wrist:
        box(-20, 80, -13, 83, C["wrist_wearing"])
    if ring:
        box(13, 84, 16, 86, C["ring"])
    lower_end = {0: 86, 1: 96, 2: 110, 3: 124}[lower_len]
    if lower_len <= 1:  # three-point and medium-short: a skirt
        box(-12, 74, 12, lower_end, C["skirt"])
    else:
        box(-10, 74, -1, lower_end, C["pants"])
        box(1, 74, 10, lower_end, C["pants"])
    if waist:
        box(-13, 72, 13, 76, C["belt"])
    if socks:
        label = C["socks"] if socks == 1 else C["leggings"]
        box(-9, max(lower_end, 112), -2, 128, label)
        box(2, max(lower_end, 112), 9, 128, label)
    box(-11, 128, -1, 134, C["footwear"])
    box(1, 128, 11, 134, C["footwear"])
    # colours: a background gradient, skin, hair; garments textured by fabric and pattern
    img = np.empty((height, width, 3), np.float32)
    img[:] = np.linspace(235, 200, height)[:, None, None]
    tone = rng.uniform(0.6, 1.0)
    colours = {
        C["skin"]: np.array([224, 172, 140]) * tone, C["face"]: np.array([230, 180, 150]) * tone,
        C["hair"]: rng.uniform(20, 120, 3), C["headwear"]: rng.uniform(0, 255, 3),
        C["eyeglass"]: np.array([20, 20, 20]), C["neckwear"]: rng.uniform(0, 255, 3),
        C["belt"]: np.array([50, 30, 20]), C["footwear"]: rng.uniform(0, 80, 3),
        C["socks"]: np.array([240, 240, 240]), C["leggings"]: np.array([30, 30, 30]),
        C["wrist_wearing"]: np.array([200, 170, 40]), C["ring"]: np.array([255, 215, 0]),
    }  # fmt: skip
    for label, rgb in colours.items():
        img[mask == label] = rgb
    fabric, pattern = labels[12:15], labels[15:18]
    for garment, labels_of in ((0, ("top",)), (1, ("skirt", "pants")), (2, ("outer",))):
        if fabric[garment] == 7:
            continue
        tex = _texture(rng, height, width, FABRICS[fabric[garment]], PATTERNS[pattern[garment]])
        for name in labels_of:
            img[mask == C[name]] = tex[mask == C[name]]
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def item_name(i: int, rng: np.random.Generator) -> str:
    """A name in the data set's style: MEN-Denim-id_00000080-01_7_additional.jpg."""
    gender = "MEN" if rng.random() < 0.5 else "WOMEN"
    kind = ("Denim", "Tees_Tanks", "Dresses", "Jackets_Coats", "Pants")[i % 5]
    return f"{gender}-{kind}-id_{i:08d}-01_{1 + i % 7}_front.jpg"


def write_synthpeople(
    raw_dir, num_people: int = 2000, seed: int = 0, width: int = 96, height: int = 140,
    missing_segm: float = 0.05, missing_labels: float = 0.02,
) -> Path:  # fmt: skip
    """Write `num_people` SynthPeople in DeepFashion-MultiModal's layout under `raw_dir` (written
    next to it and renamed when complete); a fraction of the items lacks its parsing mask or its
    labels, as in the real set."""
    raw_dir = Path(raw_dir)
    remove_stale_tmp(raw_dir)
    tmp = raw_dir.with_name(f"{raw_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("images", "segm", "labels/shape", "labels/texture"):
        (tmp / sub).mkdir(parents=True)
    shape, fabric, pattern, captions = [], [], [], {}
    for i in range(num_people):
        rng = np.random.default_rng([seed, i])
        name = item_name(i, rng)
        labels = draw_labels(rng)
        image, mask = render_person(rng, labels, width, height)
        Image.fromarray(image).save(tmp / "images" / name, quality=95)
        if rng.random() >= missing_segm:
            stem = Path(name).stem
            Image.fromarray(mask).save(tmp / "segm" / f"{stem}_segm.png", compress_level=1)
        if rng.random() >= missing_labels:
            shape.append(f"{name} " + " ".join(map(str, labels[:12])))
        fabric.append(f"{name} " + " ".join(map(str, labels[12:15])))
        pattern.append(f"{name} " + " ".join(map(str, labels[15:18])))
        sleeve = SHAPE_FIELDS[0][1][labels[0]]
        captions[name] = f"A person in a {sleeve}-sleeve {FABRICS[labels[12]]} top."
    (tmp / SHAPE_FILE).write_text("\n".join(shape) + "\n")
    (tmp / FABRIC_FILE).write_text("\n".join(fabric) + "\n")
    (tmp / PATTERN_FILE).write_text("\n".join(pattern) + "\n")
    (tmp / "captions.json").write_text(json.dumps(captions))
    params = {"num_people": num_people, "seed": seed, "width": width, "height": height}
    (tmp / GENERATED).write_text(json.dumps(params) + "\n")
    if raw_dir.exists():
        shutil.rmtree(raw_dir)
    tmp.rename(raw_dir)
    log.info("wrote %d SynthPeople to %s", num_people, raw_dir)
    return raw_dir


class SynthPeople(DeepFashionMM):
    """SynthPeople through the DeepFashion-MultiModal reader; generates its raw folder when
    absent and reuses one only if it was generated from the same options."""

    name = "synthpeople"

    def __init__(
        self, raw_dir: str, num_people: int = 2000, width: int = 96, height: int = 140,
        generator_seed: int = 0, **kwargs,
    ):  # fmt: skip
        raw = Path(raw_dir).expanduser()
        want = {"num_people": num_people, "seed": generator_seed, "width": width, "height": height}
        if not (raw / GENERATED).is_file():
            with data_lock(raw):
                if not (raw / GENERATED).is_file():
                    write_synthpeople(raw, num_people, generator_seed, width, height)
        got = json.loads((raw / GENERATED).read_text())
        if got != want:
            raise BadInputError(
                f"{raw / GENERATED}: generated with {got}, but data.source asks for {want}; use "
                "another data.raw_dir (and data.root) or delete the folder"
            )
        super().__init__(str(raw), **kwargs)


__all__ = ["SynthPeople", "draw_labels", "render_person", "write_synthpeople"]
