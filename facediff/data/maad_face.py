"""MAAD-Face: 47 ternary attributes (1 / -1 / 0 = unknown) on VGGFace2 images, no masks.

`MAAD_Face.csv` has the header `Filename,Identity,` followed by the 47 attribute names; file
names are VGGFace2 paths such as `n000002/0001_01.jpg`. Images are read from a VGGFace2 folder
(`<root>/train/n000002/0001_01.jpg`, or `test/`) or straight from the zip archive, one member at a
time, without extracting it.

Balanced manifest. The CSV holds 3.3 M rows and is heavily skewed for most attributes. For an
attribute subset S and a target size n we choose rows greedily: at each step the attribute of S
with the largest imbalance (positives minus negatives among the rows chosen so far) asks for a
row with its minority value; among the next 64 rows of a seeded shuffle of the rows that have
that *known* value, we take the one that most reduces the summed |imbalance| over all of S.
Unknown values count for neither side, so "unknown" is never folded into "negative". Where an
attribute runs out of minority rows, the others carry on. The report gives the per-attribute
counts in the CSV and in the manifest.
"""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from facediff.data.labels import select_attributes
from facediff.data.prepared import BadInputError, Sample, crop_resize, load_image, random_split


def read_maad_csv(path) -> tuple[list[str], list[str], np.ndarray]:
    """Read MAAD_Face.csv: (file names, attribute names, int8 (N, A) values in {-1, 0, 1})."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: MAAD-Face CSV not found")
    try:
        files, names, rows = _read_maad_rows(path)
    except UnicodeDecodeError as e:
        raise BadInputError(f"{path}: not a text CSV ({e})") from None
    except csv.Error as e:  # a NUL byte, an unterminated quote, ...
        raise BadInputError(f"{path}: not a well-formed CSV ({e})") from None
    values = np.array(rows, dtype=np.int8).reshape(len(rows), len(names))
    return files, names, values


def _read_maad_rows(path: Path) -> tuple[list[str], list[str], list[list[int]]]:
    files, rows = [], []
    names: list[str] = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[:2] != ["Filename", "Identity"]:
            raise BadInputError(f"{path}:1: expected a header starting 'Filename,Identity,'")
        names = [h.strip() for h in header[2:]]
        width = len(header)
        for lineno, fields in enumerate(reader, start=2):
            if not fields:
                continue
            if len(fields) != width:
                raise BadInputError(
                    f"{path}:{lineno}: expected {width} fields like the header, got {len(fields)}"
                )
            try:
                vals = [int(v) for v in fields[2:]]
            except ValueError:
                raise BadInputError(
                    f"{path}:{lineno}: attribute values must be integers"
                ) from None
            bad = [v for v in vals if v not in (-1, 0, 1)]
            if bad:
                raise BadInputError(
                    f"{path}:{lineno}: attribute values must be -1, 0 or 1, got {bad[0]}"
                )
            files.append(fields[0])
            rows.append(vals)
    return files, names, rows


def balanced_manifest(
    values: np.ndarray, num_items: int, seed: int, candidates: int = 64
) -> np.ndarray:
    """Row indices balanced over the attributes (see the module docstring)."""
    rng = np.random.default_rng(seed)
    v = values.astype(np.int64)
    pools = {
        (k, s): rng.permutation(np.flatnonzero(v[:, k] == s)).tolist()
        for k in range(v.shape[1])
        for s in (1, -1)
    }
    taken = np.zeros(len(v), bool)
    imbalance = np.zeros(v.shape[1], np.int64)  # positives - negatives among chosen rows
    chosen: list[int] = []
    while len(chosen) < num_items:
        # the most imbalanced attribute that still has rows of its minority value
        order = np.argsort(-np.abs(imbalance), kind="stable")
        pick = None
        for k in order:
            want = -1 if imbalance[k] > 0 else 1
            pool = pools[(int(k), want)]
            while pool and taken[pool[-1]]:
                pool.pop()
            if pool:
                pick = pool
                break
        if pick is None:
            break
        # among a few candidates of that value, the one that most reduces the total imbalance
        cands = [r for r in pick[-candidates:] if not taken[r]]
        gain = np.abs(imbalance[None] + v[cands]).sum(1)
        r = cands[int(np.argmin(gain))]
        pick.remove(r)
        taken[r] = True
        imbalance += v[r]
        chosen.append(int(r))
    return np.sort(np.array(chosen, dtype=np.int64))


def attribute_counts(names, values) -> dict:
    return {
        n: {
            "positive": int((values[:, k] == 1).sum()),
            "negative": int((values[:, k] == -1).sum()),
            "unknown": int((values[:, k] == 0).sum()),
        }
        for k, n in enumerate(names)
    }


class MaadFace:
    """MAAD-Face as a prepare source (attributes only; `has_masks` is False).

    Args:
        raw_dir: the VGGFace2 images, a folder (holding train/ and/or test/) or the zip archive.
        csv_path: MAAD_Face.csv.
        attributes: the attribute subset (None: all 47).
        num_items: manifest size (None: every row).
        balanced: draw the manifest balanced over `attributes` (see the module docstring).
        val_size, test_size: items of the seeded val and test splits; train is the rest.
        report_path: where to write the manifest report JSON (None: only into meta.json).
    """

    name = "maad_face"
    has_masks = False

    def __init__(
        self,
        raw_dir: str,
        csv_path: str,
        attributes: list[str] | None = None,
        num_items: int | None = None,
        balanced: bool = True,
        seed: int = 0,
        val_size: int = 500,
        test_size: int = 0,
        report_path: str | None = None,
    ):
        files, names, values = read_maad_csv(Path(csv_path).expanduser())
        keep = select_attributes(names, attributes, "data.attributes")
        self.attr_names = [names[k] for k in keep]
        values = values[:, keep]
        if num_items is None or num_items >= len(values):
            rows = np.arange(len(values))
        elif balanced:
            rows = balanced_manifest(values, num_items, seed)
        else:
            rows = np.sort(np.random.default_rng(seed).choice(len(values), num_items, False))
        self.files = [files[r] for r in rows]
        self.values = values[rows]
        self.images = self.raw_dir = Path(raw_dir).expanduser()
        if not self.images.exists():
            raise BadInputError(f"data.raw_dir: {self.images} does not exist (VGGFace2 images)")
        self.seed, self.val_size, self.test_size = seed, val_size, test_size
        self.report = {
            "csv": str(csv_path),
            "rows_in_csv": len(files),
            "manifest_items": len(rows),
            "balanced": balanced,
            "attributes_in_csv": attribute_counts(self.attr_names, values),
            "attributes_in_manifest": attribute_counts(self.attr_names, self.values),
        }
        if report_path:
            Path(report_path).write_text(json.dumps(self.report, indent=1))
        self._zip = None
        self._members: dict[str, str] | None = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_zip"] = None
        return state

    def __len__(self) -> int:
        return len(self.files)

    def item_name(self, i: int) -> str:
        return self.files[i]

    def _read(self, name: str, resolution: int):
        if self.images.is_dir():
            for sub in ("train", "test", ""):
                path = self.images / sub / name
                if path.is_file():
                    return load_image(path, resolution)
            raise BadInputError(f"{self.images}/{{train,test}}/{name}: image not found")
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.images)
            self._members = {}
            for m in self._zip.namelist():
                parts = m.split("/")
                if len(parts) >= 2:
                    self._members.setdefault("/".join(parts[-2:]), m)
        member = self._members.get(name)
        if member is None:
            raise BadInputError(f"{self.images}: no member for {name} in the zip archive")
        try:
            with self._zip.open(member) as f, Image.open(f) as im:
                im.load()
                return crop_resize(im.convert("RGB"), resolution)
        except Exception as e:
            raise BadInputError(f"{self.images}:{member}: unreadable image ({e})") from e

    def load(self, i: int, resolution: int) -> Sample:
        image, crop, hw = self._read(self.files[i], resolution)
        return Sample(image, None, self.values[i].copy(), crop, hw)

    def splits(self) -> dict[str, np.ndarray]:
        n = len(self)
        train = n - self.val_size - self.test_size
        if train <= 0:
            raise BadInputError(
                f"data.source.val_size + data.source.test_size = {self.val_size + self.test_size} leaves no "
                f"training items out of {n}"
            )
        s = random_split(n, train, self.val_size, self.seed, "data.source")
        return s
