"""FaceDataModule: train/val/test batches from a prepared folder (see `facediff.data`)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from facediff.data.labels import FLIP_PAIRS, flip_lut, select_attributes
from facediff.data.latents import open_latents
from facediff.data.prepared import BadInputError, PreparedDataset, data_lock, prepare
from facediff.data.transforms import hflip, hflip_crop, to_float

log = logging.getLogger(__name__)


class FaceDataset(Dataset):
    """Items of one split. A key is an index into the split or `(index, flip)` from EpochSampler."""

    def __init__(
        self,
        data: PreparedDataset,
        indices: np.ndarray,
        attr_index: list[int],
        latents: np.ndarray | None = None,
        flip_lut: torch.Tensor | None = None,
    ):
        self.data, self.indices, self.attr_index = data, np.asarray(indices), attr_index
        self.flip_lut = flip_lut  # the data set's left/right swap (None: the face's)
        self.latents = latents  # (N, 2, C, h, w): cached first-stage latents, plain and mirrored

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        pos, flip = key if isinstance(key, tuple) else (key, False)
        i = int(self.indices[pos])
        arr = self.data.arrays
        image = to_float(torch.from_numpy(np.array(arr["images"][i])).permute(2, 0, 1))
        mask = torch.from_numpy(np.array(arr["masks"][i])).long() if "masks" in arr else None
        crop = arr["crop"][i].astype(np.float32)
        if flip:
            image, mask = hflip(image, mask, self.flip_lut)
            crop = hflip_crop(crop)
        h, w = arr["source_hw"][i]
        control = np.concatenate([[float(flip)], crop, [h / 1024.0, w / 1024.0]])
        item = {
            "image": image,
            "attrs": torch.from_numpy(arr["attrs"][i][self.attr_index].astype(np.float32)),
            "attrs_known": torch.from_numpy(arr["known"][i][self.attr_index].copy()),
            "control": torch.from_numpy(control.astype(np.float32)),
            "index": torch.tensor(i),
        }
        if mask is not None:
            item["mask"] = mask
        if self.latents is not None:
            item["latent"] = torch.from_numpy(np.array(self.latents[i, int(flip)]))
        return item


class EpochSampler(Sampler):
    """Seeded per-epoch order and flips, sharded over DDP ranks, resumable mid-epoch.

    Item k of epoch e is a pure function of (seed, e, k), so a resumed run draws the same data
    in the same order. `state_dict()` records the epoch and how many items this rank consumed.
    """

    def __init__(self, size: int, shuffle: bool, flip_p: float, seed: int = 0):
        self.size, self.shuffle, self.flip_p, self.seed = size, shuffle, flip_p, seed
        self.epoch, self.start = 0, 0

    def _world(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        _, world = self._world()
        return math.ceil(self.size / world)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.start = epoch, 0

    def __iter__(self):
        rank, world = self._world()
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.size) if self.shuffle else np.arange(self.size)
        flips = rng.random(self.size) < self.flip_p
        per_rank = len(self)
        order = np.resize(order, per_rank * world)[rank::world]  # pad by wrapping, like DDP
        flips = np.resize(flips, per_rank * world)[rank::world]
        start, self.start = self.start, 0
        for k in range(start, per_rank):
            yield int(order[k]), bool(flips[k])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start": self.start}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.start = state["epoch"], state["start"]


SOURCE_RUN_OPTIONS = frozenset({"num_workers"})  # how a source runs, not what it gives
# source classes that moved: a folder prepared from the old name holds the same data
MOVED_SOURCES = {"facediff.data.celebamask.SynthFaces": "facediff.data.synthfaces.SynthFaces"}


def source_origin(source, raw_dir) -> dict:
    """What a prepared folder was made from: the source class, its options (as configured,
    less how it runs) and the raw folder, as plain values for meta.json."""
    from omegaconf import OmegaConf

    func = getattr(source, "func", source)
    options = {}
    for k, v in sorted((getattr(source, "keywords", None) or {}).items()):
        if k in SOURCE_RUN_OPTIONS:
            continue
        v = OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
        options[k] = list(v) if isinstance(v, tuple) else v
    return {
        "source": f"{func.__module__}.{func.__qualname__}",
        "options": options,
        "raw_dir": str(Path(raw_dir).expanduser().resolve()) if raw_dir else None,
    }


class FaceDataModule(L.LightningDataModule):
    """Batches of the batch dict (see `facediff.data`) from a prepared folder.

    Args:
        root: the prepared folder.
        resolution: expected image size; must match the prepared folder.
        source: a callable returning a prepare source (Hydra `_partial_`), called with
            `raw_dir=raw_dir`; when `root` has no prepared data, `prepare_data` prepares it
            (SynthFaces generate themselves into `raw_dir`).
        raw_dir: the raw data set (archive root, VGGFace2 folder or zip, SynthFaces folder).
        attributes: attribute subset (None: all of the data set's).
        num_attributes: the attribute count the model is built for; checked at setup.
        require_masks: fail early if the data set has no masks (a mask-conditioned model).
        flip_p: probability of a horizontal flip in training (swaps left/right classes).
        verify_hash: recompute the content hash of the prepared arrays at setup.
        num_workers: DataLoader workers (each single-threaded).
    """

    def __init__(
        self,
        root: str,
        resolution: int = 64,
        source: Callable | None = None,
        raw_dir: str | None = None,
        attributes: list[str] | None = None,
        num_attributes: int | None = None,
        num_mask_classes: int | None = None,
        require_masks: bool = False,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        flip_p: float = 0.5,
        seed: int = 0,
        verify_hash: bool = True,
        skip_bad: bool = False,
        prepare_workers: int = 0,
    ):
        super().__init__()
        self.root = Path(root).expanduser()
        self.resolution, self.source, self.raw_dir = resolution, source, raw_dir
        self.attributes, self.num_attributes = attributes, num_attributes
        self.num_mask_classes = num_mask_classes
        self.require_masks = require_masks
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.flip_p, self.seed = num_workers, flip_p, seed
        self.verify_hash, self.skip_bad, self.prepare_workers = (
            verify_hash,
            skip_bad,
            prepare_workers,
        )
        self.data: PreparedDataset | None = None
        self.latents: np.ndarray | None = None  # set by use_latents (facediff.data.latents)
        self.samplers: dict[str, EpochSampler] = {}
        self._resume_sampler: dict | None = None

    # ------------------------------------------------------------------ preparing and opening
    def prepare_data(self, force: bool = False) -> dict | None:
        """Prepare `root` from `source` when it is absent (or always, with `force`).

        Jobs sharing a data folder (a parallel sweep) take turns: `<root>.lock` is held while
        preparing; a job that finds it held waits, then reuses the prepared set."""
        if (self.root / "meta.json").is_file() and not force:
            self.check_origin()
            return None
        with data_lock(self.root):
            if (self.root / "meta.json").is_file() and not force:
                log.info("%s was prepared by another job meanwhile; reusing it", self.root)
                self.check_origin()
                return None
            return self._prepare()

    def origin(self) -> dict | None:
        """What this data module prepares from (`source_origin`), None without a source."""
        return None if self.source is None else source_origin(self.source, self.raw_dir)

    def check_origin(self) -> None:
        """A prepared folder is reused only for the source and options it was prepared from
        (recorded in meta.json as `origin`; folders prepared before that are not checked)."""
        meta_path = self.root / "meta.json"
        try:
            then = json.loads(meta_path.read_text()).get("origin")
        except (json.JSONDecodeError, OSError):
            return  # PreparedDataset names a damaged meta.json when it opens it
        now = self.origin()
        if isinstance(then, dict) and then.get("source") in MOVED_SOURCES:
            then = then | {"source": MOVED_SOURCES[then["source"]]}
        if then is None or now is None or then == now:
            return

        def flat(origin: dict) -> dict:
            options = {f"data.source.{k}": v for k, v in (origin.get("options") or {}).items()}
            return {"source": origin.get("source"), "raw_dir": origin.get("raw_dir")} | options

        then, now = flat(then), flat(now)
        diff = {k: (then.get(k), now.get(k)) for k in then | now if then.get(k) != now.get(k)}
        what = "; ".join(
            f"{k}: prepared from {a!r}, configured {b!r}" for k, (a, b) in diff.items()
        )
        raise BadInputError(
            f"{meta_path}: this folder was prepared from other data than data.source / "
            f"data.raw_dir say ({what}); prepare it again with facediff-prepare force=true "
            "(same options), or give data.root another folder"
        )

    def _prepare(self) -> dict:
        if self.source is None:
            raise BadInputError(
                f"data.root: {self.root} holds no prepared data set and no data.source is "
                "configured to prepare it (run facediff-prepare)"
            )
        log.info("preparing %s at %d px", self.root, self.resolution)
        if self.raw_dir is None:
            raise BadInputError("data.raw_dir: not set; where is the raw data set?")
        source = self.source(raw_dir=self.raw_dir)
        return prepare(
            source, self.root, self.resolution, self.skip_bad, self.prepare_workers,
            origin=self.origin(),
        )  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        self.data = PreparedDataset(self.root, verify=self.verify_hash)
        if self.data.resolution != self.resolution:
            raise BadInputError(
                f"{self.root / 'meta.json'}: prepared at {self.data.resolution} px but "
                f"data.resolution={self.resolution}; prepare again or change data.resolution"
            )
        if self.require_masks and not self.data.has_masks:
            raise BadInputError(
                f"{self.root}: the {self.data.meta['source']} data set has no masks, but the "
                "model is conditioned on masks; choose a conditioner without a mask encoder"
            )
        classes = self.data.meta["mask_classes"]
        if self.data.has_masks and self.num_mask_classes not in (None, len(classes)):
            raise BadInputError(
                f"data.num_mask_classes={self.num_mask_classes} but {self.root / 'meta.json'} "
                f"has {len(classes)} mask classes ({', '.join(classes[:4])}, ...); set "
                f"data.num_mask_classes={len(classes)} (the model is built for that count)"
            )
        pairs = self.data.meta.get("flip_pairs", FLIP_PAIRS)  # folders from before: faces
        self.flip_lut = torch.from_numpy(flip_lut(classes, pairs)) if classes else None
        where = f"data.attributes (data set {self.root})"
        self.attr_index = select_attributes(self.data.attr_names, self.attributes, where)
        if self.num_attributes is not None and self.num_attributes != len(self.attr_index):
            raise BadInputError(
                f"data.num_attributes={self.num_attributes} but {where} selects "
                f"{len(self.attr_index)} attributes"
            )

    @property
    def attr_names(self) -> list[str]:
        self.setup()
        return [self.data.attr_names[k] for k in self.attr_index]

    def control_default(self) -> list[float]:
        """The median control vector of the unflipped items (crop box, source size; flip 0):
        what sampling from attribute values uses unless told otherwise."""
        self.setup()
        arr = self.data.arrays
        crop = np.median(np.asarray(arr["crop"], np.float64), axis=0)
        hw = np.median(np.asarray(arr["source_hw"], np.float64), axis=0) / 1024.0
        return [0.0, *map(float, crop), *map(float, hw)]

    @property
    def has_masks(self) -> bool:
        self.setup()
        return self.data.has_masks

    def use_latents(self, folder) -> None:
        """Serve `batch["latent"]` from a cache written by `facediff.data.latents`."""
        self.setup()
        latents = open_latents(folder)
        if len(latents) != self.data.meta["num_items"]:
            raise BadInputError(
                f"{folder}: {len(latents)} latents for the {self.data.meta['num_items']} items "
                f"of {self.root}"
            )
        self.latents = latents

    def dataset(self, split: str) -> FaceDataset:
        self.setup()
        return FaceDataset(
            self.data, self.data.split(split), self.attr_index, self.latents, self.flip_lut
        )

    # ------------------------------------------------------------------------------ loaders
    def _loader(self, split: str, train: bool) -> DataLoader:
        ds = self.dataset(split)
        if len(ds) == 0:
            raise BadInputError(f"{self.root}: the {split} split is empty")
        if train and self.batch_size > len(ds):
            raise BadInputError(
                f"data.batch_size={self.batch_size} exceeds the {len(ds)} items of the train "
                f"split of {self.root}; use a smaller batch"
            )
        sampler = EpochSampler(
            len(ds), shuffle=train, flip_p=self.flip_p if train else 0.0, seed=self.seed
        )
        if train and self._resume_sampler is not None:
            sampler.load_state_dict(self._resume_sampler)
            self._resume_sampler = None
        self.samplers[split] = sampler
        return DataLoader(
            ds,
            batch_size=self.batch_size if train else self.val_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            worker_init_fn=_single_thread_worker,
            persistent_workers=False,
            drop_last=train,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    # The train sampler's position travels in the checkpoint, so a run resumed mid-epoch sees
    # the rest of that epoch's items in the same order (Lightning calls these two hooks).
    def state_dict(self) -> dict:
        if self.trainer is None or "train" not in self.samplers:
            return {}
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {
            "train_sampler": {"epoch": self.trainer.current_epoch, "start": done * self.batch_size}
        }

    def load_state_dict(self, state: dict) -> None:
        self._resume_sampler = state.get("train_sampler")


def _single_thread_worker(_: int) -> None:
    torch.set_num_threads(1)
