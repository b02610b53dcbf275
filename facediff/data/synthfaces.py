"""SynthFaces: a procedural, seeded face data set in the raw CelebAMask-HQ layout.

Every face is drawn from its own generator (`numpy.random.default_rng([seed, index])`), so the
data set is the same whatever the number of worker processes; `facediff.data.face_renderer`
draws it. `write_synthfaces` writes the same files as the real archive (see `celebamask.py`),
and `SynthFaces` reads them through the very reader the real data goes through.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from facediff.data.celebamask import ATTR_FILE, CelebAMaskHQ
from facediff.data.face_renderer import POSE, RENDERED_ATTRIBUTES, check_pose, render_face
from facediff.data.labels import CELEBA_ATTRIBUTES
from facediff.data.prepared import BadInputError, data_lock, remove_stale_tmp

log = logging.getLogger(__name__)


def _official_file_number(i: int) -> int:
    """A CelebA file number for SynthFaces item i that puts ~80/10/10 % of the items in the
    official train / val / test partitions (i % 10 == 8 -> val, 9 -> test)."""
    r = i % 10
    if r == 8:
        return 162771 + i // 10
    if r == 9:
        return 182638 + i // 10
    return 1 + i


def _write_range(args) -> None:
    raw_dir, start, stop, seed, image_size, mask_size, pose = args
    raw_dir = Path(raw_dir)
    for i in range(start, stop):
        rng = np.random.default_rng([seed, i])
        image, _, parts, attrs = render_face(rng, image_size, **pose)
        Image.fromarray(image).save(raw_dir / "CelebA-HQ-img" / f"{i}.jpg", quality=95)
        folder = raw_dir / "CelebAMask-HQ-mask-anno" / str(i // 2000)
        for name, m in parts.items():
            png = Image.fromarray(m.astype(np.uint8) * 255)
            if mask_size != image_size:
                png = png.resize((mask_size, mask_size), Image.NEAREST)
            png.save(folder / f"{i:05d}_{name}.png", compress_level=1)
        np.save(raw_dir / ".attrs" / f"{i}.npy", np.array([attrs[n] for n in CELEBA_ATTRIBUTES]))


def write_synthfaces(
    raw_dir: str | os.PathLike,
    num_faces: int = 2000,
    seed: int = 0,
    image_size: int = 128,
    mask_size: int = 128,
    num_workers: int = 2,
    center_x: tuple[float, float] = POSE["center_x"],
    yaw: tuple[float, float] = POSE["yaw"],
) -> Path:
    """Write `num_faces` SynthFaces in the raw CelebAMask-HQ layout under `raw_dir`, with what
    they were generated from in `raw_dir/GENERATED` (checked by `SynthFaces` when reused).

    The folder is written next to its final place (`<raw_dir>.tmp-<pid>`) and renamed when
    complete; callers that may run at once hold `data_lock(raw_dir)` (SynthFaces does).
    """
    raw_dir = Path(raw_dir)
    remove_stale_tmp(raw_dir)
    tmp = raw_dir.with_name(f"{raw_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "CelebA-HQ-img").mkdir(parents=True)
    (tmp / ".attrs").mkdir()
    for k in range((num_faces - 1) // 2000 + 1):
        (tmp / "CelebAMask-HQ-mask-anno" / str(k)).mkdir(parents=True)
    chunk = 100
    pose = {"center_x": check_pose("center_x", center_x), "yaw": check_pose("yaw", yaw)}
    jobs = [
        (str(tmp), s, min(s + chunk, num_faces), seed, image_size, mask_size, pose)
        for s in range(0, num_faces, chunk)
    ]
    bar = {"total": len(jobs), "desc": f"generating {num_faces} SynthFaces", "unit": "x100"}
    if num_workers > 1:
        with ProcessPoolExecutor(num_workers, initializer=_single_thread) as pool:
            list(tqdm(pool.map(_write_range, jobs), **bar))
    else:
        for job in tqdm(jobs, **bar):
            _write_range(job)
    attrs = np.stack([np.load(tmp / ".attrs" / f"{i}.npy") for i in range(num_faces)])
    lines = [str(num_faces), " ".join(CELEBA_ATTRIBUTES)]
    lines += [
        f"{i}.jpg " + " ".join("1" if v else "-1" for v in row) for i, row in enumerate(attrs)
    ]
    (tmp / "CelebAMask-HQ-attribute-anno.txt").write_text("\n".join(lines) + "\n")
    mapping = ["idx orig_idx orig_file"]
    for i in range(num_faces):
        n = _official_file_number(i)
        mapping.append(f"{i} {n - 1} {n:06d}.jpg")
    (tmp / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(mapping) + "\n")
    shutil.rmtree(tmp / ".attrs")
    params = generation_params(num_faces, seed, image_size, mask_size, **pose)
    (tmp / GENERATED).write_text(json.dumps(params, indent=1) + "\n")
    if raw_dir.exists():
        shutil.rmtree(raw_dir)
    tmp.rename(raw_dir)
    log.info("wrote %d SynthFaces to %s", num_faces, raw_dir)
    return raw_dir


GENERATED = "synthfaces.json"


def generation_params(num_faces, seed, image_size, mask_size, center_x, yaw) -> dict:
    """What a SynthFaces raw folder is generated from (its `GENERATED` record)."""
    return {
        "num_faces": int(num_faces),
        "seed": int(seed),
        "image_size": int(image_size),
        "mask_size": int(mask_size),
        "center_x": [float(v) for v in center_x],
        "yaw": [float(v) for v in yaw],
    }


def _single_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"


class SynthFaces(CelebAMaskHQ):
    """SynthFaces through the CelebAMask-HQ reader; generates its raw folder when absent, and
    reuses one only if it was generated from the same options (its `synthfaces.json`; a folder
    without one, from before that record, counts as the default pose)."""

    name = "synthfaces"

    def __init__(
        self,
        raw_dir: str,
        num_faces: int = 2000,
        image_size: int = 128,
        mask_size: int = 128,
        generator_seed: int = 0,
        num_workers: int = 2,
        center_x=POSE["center_x"],
        yaw=POSE["yaw"],
        **kwargs,
    ):
        pose = {"center_x": check_pose("center_x", center_x), "yaw": check_pose("yaw", yaw)}
        raw = Path(raw_dir).expanduser()
        if not (raw / ATTR_FILE).is_file():
            with data_lock(raw):  # jobs preparing other resolutions share the raw folder
                if not (raw / ATTR_FILE).is_file():
                    write_synthfaces(
                        raw, num_faces, generator_seed, image_size, mask_size, num_workers, **pose
                    )
        want = generation_params(num_faces, generator_seed, image_size, mask_size, **pose)
        record = raw / GENERATED
        default = {k: list(v) for k, v in POSE.items()}  # a folder from before the record
        got = json.loads(record.read_text()) if record.is_file() else default
        for key in ("center_x", "yaw", "seed", "image_size", "mask_size"):
            if key in got and got[key] != want[key]:
                option = "generator_seed" if key == "seed" else key
                raise BadInputError(
                    f"{record}: the folder was generated with {key}={got[key]}, but "
                    f"data.source.{option}={want[key]}; use another data.raw_dir (and data.root) "
                    "or delete the folder to generate it anew"
                )
        super().__init__(str(raw), mask_size=mask_size, **kwargs)
        if len(self) != num_faces:
            raise BadInputError(
                f"{raw}: holds {len(self)} SynthFaces but data.source.num_faces={num_faces}; delete the "
                "folder to generate it anew"
            )


__all__ = [
    "GENERATED",
    "RENDERED_ATTRIBUTES",
    "SynthFaces",
    "generation_params",
    "write_synthfaces",
]
