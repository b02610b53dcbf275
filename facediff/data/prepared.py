"""The prepared format: one folder of memory-mapped arrays plus `meta.json`.

    images.npy     uint8 (N, R, R, 3)   resized with antialiasing (PIL Lanczos)
    masks.npy      uint8 (N, R, R)      nearest neighbour; absent when the source has no masks
    attrs.npy      int8  (N, A)         0/1
    known.npy      bool  (N, A)         False where the source says "unknown"
    crop.npy       float32 (N, 4)       the square crop taken from the source, (x0, y0, x1, y1) / size
    source_hw.npy  int32 (N, 2)         the source image's height and width
    meta.json      names, source, splits, resolution, format version, content hash, report

Every rank and every DataLoader worker maps the arrays read-only (`np.load(mmap_mode="r")`), so
nothing is copied into memory. A folder is written under a temporary name and renamed when
complete: a prepare that dies leaves no half-written data set behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from facediff.data.labels import FLIP_PAIRS, MASK_CLASSES

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ARRAYS = ("images", "masks", "attrs", "known", "crop", "source_hw")


class BadInputError(ValueError):
    """A data file or a data option is not what facediff expects; the message names it."""


@dataclass
class Sample:
    image: np.ndarray  # uint8 (R, R, 3)
    mask: np.ndarray | None  # uint8 (R, R)
    attrs: np.ndarray  # int8 (A,) in {-1, 0, 1}; 0 = unknown
    crop: tuple[float, float, float, float]
    source_hw: tuple[int, int]


def load_image(path, resolution: int):
    """Decode an image, take the centred square crop and resize it with antialiasing.

    Returns (uint8 (R, R, 3), normalised crop box, (height, width) of the source).
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: image not found")
    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("RGB")
    except Exception as e:  # PIL raises OSError for truncated files, UnidentifiedImageError, ...
        raise BadInputError(f"{path}: unreadable image ({e})") from e
    return crop_resize(im, resolution)


def crop_resize(im: Image.Image, resolution: int):
    w, h = im.size
    s = min(w, h)
    x0, y0 = (w - s) // 2, (h - s) // 2
    im = im.crop((x0, y0, x0 + s, y0 + s))
    if s != resolution:
        im = im.resize((resolution, resolution), Image.LANCZOS, reducing_gap=None)
    crop = (x0 / w, y0 / h, (x0 + s) / w, (y0 + s) / h)
    return np.asarray(im, dtype=np.uint8), crop, (h, w)


def array_specs(n: int, r: int, a: int, has_masks: bool) -> dict[str, tuple[tuple, np.dtype]]:
    """(shape, dtype) of each prepared array for n items at r px with a attributes."""
    specs = {
        "images": ((n, r, r, 3), np.uint8),
        "masks": ((n, r, r), np.uint8),
        "attrs": ((n, a), np.int8),
        "known": ((n, a), np.bool_),
        "crop": ((n, 4), np.float32),
        "source_hw": ((n, 2), np.int32),
    }
    return {
        k: (shape, np.dtype(dt)) for k, (shape, dt) in specs.items() if k != "masks" or has_masks
    }


def random_split(n: int, train_size: int, val_size: int, seed: int, where: str):
    """A seeded split: `train_size` items, then `val_size`, then the rest as test."""
    if train_size + val_size > n:
        raise BadInputError(
            f"{where}.train_size + {where}.val_size = {train_size + val_size} exceeds the {n} "
            "items of the data set"
        )
    perm = np.random.default_rng(seed).permutation(n)
    return {
        "train": np.sort(perm[:train_size]),
        "val": np.sort(perm[train_size : train_size + val_size]),
        "test": np.sort(perm[train_size + val_size :]),
    }


# --------------------------------------------------------------------------------------- writing
@contextmanager
def data_lock(path: Path, timeout: float = 3600):
    """An exclusive lock on `<path>.lock` (filelock's OS lock: a process that dies lets go of
    it) with the holder's pid in `<path>.lock.owner`. A job that waits says whom it waits for;
    past `timeout` seconds it stops, naming the holder."""
    from filelock import FileLock, Timeout

    lock, owner = FileLock(f"{path}.lock"), Path(f"{path}.lock.owner")
    Path(path).parent.mkdir(parents=True, exist_ok=True)

    def holder() -> str:
        return owner.read_text().strip() if owner.is_file() else "?"

    try:
        lock.acquire(timeout=0.05)
    except Timeout:
        log.info("waiting for pid %s, which is preparing %s", holder(), path)
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise BadInputError(
                f"{path}.lock: still held by pid {holder()} after {timeout:.0f} s (another job "
                "preparing the same data); wait for it or stop it"
            ) from None
    try:
        owner.write_text(str(os.getpid()))
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_tmp(path) -> None:
    """Delete `<path>.tmp-<pid>` files or folders left by processes that are gone (a kill
    in the middle of a write): prepared sets, SynthFaces raw folders, checkpoints."""
    for tmp in Path(path).parent.glob(f"{Path(path).name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            log.info("removed %s, left by a process that is gone", tmp)


_WORKER_SOURCE = None


def _init_worker(source) -> None:
    global _WORKER_SOURCE
    os.environ["OMP_NUM_THREADS"] = "1"
    _WORKER_SOURCE = source


def _load_one(args):
    i, resolution = args
    try:
        return i, _WORKER_SOURCE.load(i, resolution), None
    except BadInputError as e:
        return i, None, str(e)


def prepare(
    source,
    out_dir: str | os.PathLike,
    resolution: int,
    skip_bad: bool = False,
    num_workers: int = 0,
    progress: bool = True,
    origin: dict | None = None,
) -> dict:
    """Write `source` to `out_dir` in the prepared format; returns the report (also in meta.json).

    Bad items raise a BadInputError naming the file; with `skip_bad` they are left out, listed
    and counted in the report.
    """
    out_dir = Path(out_dir).expanduser()
    t0 = time.perf_counter()
    splits = source.splits()
    n = len(source)
    remove_stale_tmp(out_dir)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    r, a = resolution, len(source.attr_names)
    shapes = array_specs(n, r, a, source.has_masks)
    arrays = {
        k: np.lib.format.open_memmap(tmp / f"{k}.npy", mode="w+", dtype=dt, shape=shape)
        for k, (shape, dt) in shapes.items()
    }
    kept, skipped = [], []
    jobs = ((i, resolution) for i in range(n))
    if num_workers > 0:
        pool = mp.get_context("spawn").Pool(num_workers, _init_worker, (source,))
        results = pool.imap(_load_one, jobs, chunksize=16)
    else:
        pool = None
        _init_worker(source)
        results = map(_load_one, jobs)
    try:
        bar = tqdm(results, total=n, desc=f"prepare {source.name} @ {r}px", disable=not progress)
        for i, sample, error in bar:
            if error is not None:
                if not skip_bad:
                    raise BadInputError(error + " (set skip_bad=true to skip such items)")
                skipped.append({"index": i, "error": error})
                continue
            j = len(kept)
            arrays["images"][j] = sample.image
            if sample.mask is not None and "masks" in arrays:
                arrays["masks"][j] = sample.mask
            arrays["attrs"][j] = sample.attrs > 0
            arrays["known"][j] = sample.attrs != 0
            arrays["crop"][j] = sample.crop
            arrays["source_hw"][j] = sample.source_hw
            kept.append(i)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if pool is not None:
            pool.terminate()
    for arr in arrays.values():
        arr.flush()
    del arrays
    if skipped:  # compact the arrays to the kept items
        for k in shapes:
            full = np.load(tmp / f"{k}.npy", mmap_mode="r")
            part = np.array(full[: len(kept)])
            del full
            np.save(tmp / f"{k}.npy", part)
    position = {old: new for new, old in enumerate(kept)}
    new_splits = {
        name: [position[int(i)] for i in idx if int(i) in position] for name, idx in splits.items()
    }
    report = {
        "source": source.name,
        "items": n,
        "kept": len(kept),
        "skipped": len(skipped),
        "skipped_items": skipped[:1000],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if getattr(source, "report", None):  # e.g. MAAD-Face's manifest report
        report["source_report"] = source.report
    meta = {
        "format_version": FORMAT_VERSION,
        "source": source.name,
        "raw_dir": str(getattr(source, "raw_dir", "")),
        "resolution": r,
        "num_items": len(kept),
        "has_masks": bool(source.has_masks),
        # the source's vocabulary (the face's unless it has its own)
        "mask_classes": list(getattr(source, "mask_classes", MASK_CLASSES))
        if source.has_masks
        else [],
        "flip_pairs": [list(p) for p in getattr(source, "flip_pairs", FLIP_PAIRS)],
        "attr_names": list(source.attr_names),
        "splits": new_splits,
        "item_names": [Path(source.item_name(i)).name for i in kept],
        "content_hash": content_hash(tmp, list(shapes)),
        "report": report,
    }
    if origin is not None:  # the source and options it was prepared from (checked on reuse)
        meta["origin"] = origin
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    old = out_dir.with_name(out_dir.name + ".old")
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    log.info("prepared %d items (%d skipped) in %s", len(kept), len(skipped), out_dir)
    return report


META_FIELDS = {  # meta.json: field -> (type, what it must be)
    "has_masks": (bool, "true or false"),
    "num_items": (int, "an integer >= 0"),
    "resolution": (int, "an integer >= 1"),
    "attr_names": (list, "a list of attribute names"),
    "mask_classes": (list, "a list of class names"),
    "splits": (dict, "{split: [item indices]}"),
    "content_hash": (str, "a sha256 hex string"),
}


def check_meta(meta: dict, path: Path) -> None:
    """Every field a reader uses, of the type it uses: a damaged or hand-edited meta.json is
    named by its field instead of failing later as a KeyError or a wrong shape."""

    def bad(field, what):
        raise BadInputError(f"{path}: {field}: expected {what}, got {meta.get(field)!r:.80}")

    for field, (kind, what) in META_FIELDS.items():
        value = meta.get(field)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            bad(field, what)
    if meta["num_items"] < 0:
        bad("num_items", META_FIELDS["num_items"][1])
    if meta["resolution"] < 1:
        bad("resolution", META_FIELDS["resolution"][1])
    if not all(isinstance(n, str) for n in meta["attr_names"] + meta["mask_classes"]):
        bad("attr_names", "names (strings)")
    n = meta["num_items"]
    for name, idx in meta["splits"].items():
        ok = isinstance(idx, list) and all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n for i in idx
        )
        if not ok:
            raise BadInputError(
                f"{path}: splits.{name}: expected item indices in [0, {n}), got {str(idx)[:80]}"
            )


def content_hash(folder: Path, names) -> str:
    h = hashlib.sha256()
    for k in sorted(names):
        with open(Path(folder) / f"{k}.npy", "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------- reading
class PreparedDataset:
    """Read-only view of a prepared folder; arrays are memory-mapped on first use in each process.

    Args:
        root: the prepared folder.
        verify: recompute the content hash and compare it with meta.json.
    """

    def __init__(self, root: str | os.PathLike, verify: bool = False):
        self.root = Path(root).expanduser()
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise BadInputError(f"{meta_path}: not a prepared data set (meta.json missing)")
        try:
            self.meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadInputError(f"{meta_path}: unreadable ({e})") from e
        if not isinstance(self.meta, dict):
            raise BadInputError(
                f"{meta_path}: expected a JSON object, got {type(self.meta).__name__}"
            )
        version = self.meta.get("format_version")
        if version != FORMAT_VERSION:
            raise BadInputError(
                f"{meta_path}: format_version {version!r}, this facediff reads version "
                f"{FORMAT_VERSION}; prepare the data set again (facediff-prepare)"
            )
        check_meta(self.meta, meta_path)
        self.names = [k for k in ARRAYS if k != "masks" or self.meta["has_masks"]]
        for k in self.names:
            if not (self.root / f"{k}.npy").is_file():
                raise BadInputError(f"{self.root / f'{k}.npy'}: missing from the prepared folder")
        self._arrays: dict[str, np.ndarray] | None = None
        _ = self.arrays  # opens every array now: a damaged one is named before any training
        if verify:
            found = content_hash(self.root, self.names)
            if found != self.meta["content_hash"]:
                raise BadInputError(
                    f"{self.root}: content hash {found[:12]}... does not match meta.json's "
                    f"{self.meta['content_hash'][:12]}...; the arrays were changed after "
                    "prepare: prepare the data set again"
                )

    def expected_arrays(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """(shape, dtype) of each array, from meta.json."""
        m = self.meta
        return array_specs(m["num_items"], m["resolution"], len(m["attr_names"]), m["has_masks"])

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_arrays"] = None  # each worker maps the files itself
        return state

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            arrays = {}
            for k, (shape, dtype) in self.expected_arrays().items():
                path = self.root / f"{k}.npy"
                try:
                    arr = np.load(path, mmap_mode="r")
                # truncated, not an .npy file, a header numpy cannot parse (SyntaxError,
                # tokenize errors, ...): whatever numpy raises on a damaged file
                except Exception as e:  # noqa: BLE001
                    raise BadInputError(
                        f"{path}: unreadable ({e}); expected {dtype} {shape} as meta.json says: "
                        "prepare the data set again"
                    ) from None
                if arr.shape != shape or arr.dtype != dtype:
                    raise BadInputError(
                        f"{path}: {arr.dtype} {arr.shape}, meta.json says {dtype} {shape}: "
                        "prepare the data set again"
                    )
                arrays[k] = arr
            self._arrays = arrays
        return self._arrays

    def __len__(self) -> int:
        return self.meta["num_items"]

    @property
    def attr_names(self) -> list[str]:
        return self.meta["attr_names"]

    @property
    def has_masks(self) -> bool:
        return self.meta["has_masks"]

    @property
    def resolution(self) -> int:
        return self.meta["resolution"]

    def split(self, name: str) -> np.ndarray:
        splits = self.meta["splits"]
        if name not in splits:
            raise BadInputError(
                f"{self.root / 'meta.json'}: no split {name!r}; has {list(splits)}"
            )
        return np.asarray(splits[name], dtype=np.int64)
