"""First-stage latents cached once per (prepared data set, autoencoder), so latent-diffusion
training never runs the encoder.

`cache_latents(datamodule, autoencoder)` encodes every item of the prepared folder, unflipped
and mirrored (training flips with `data.flip_p`), into `<prepared>/latents/<key>/latents.npy`
(N, 2, C, h, w) float32, already scaled, with a `meta.json` naming the autoencoder, the data
set's content hash and the shape. The key is a digest of the autoencoder's weights and scaling
factor plus the data set's content hash, so another autoencoder or changed data gets its own
cache; a cache whose meta or size does not match is an error naming the file. Jobs sharing
the folder take turns (the data lock), and the array is written to a temp file and renamed.
`FaceDataModule(latents=...)` then puts `batch["latent"]` beside each image, and
`LatentDiffusion.encode` uses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from facediff.data.prepared import BadInputError, data_lock
from facediff.data.transforms import hflip, to_float

log = logging.getLogger(__name__)


def autoencoder_digest(autoencoder) -> str:
    """sha256 of the first stage's weights (names, shapes, bytes) and scaling factor."""
    h = hashlib.sha256()
    for name, t in sorted(autoencoder.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    h.update(repr(float(getattr(autoencoder, "scaling_factor", 1.0))).encode())
    return h.hexdigest()


def cache_dir(root: Path, autoencoder, content_hash: str) -> Path:
    key = hashlib.sha256(f"{autoencoder_digest(autoencoder)}:{content_hash}".encode())
    return Path(root) / "latents" / key.hexdigest()[:16]


def _check(folder: Path, meta: dict, expected: dict) -> np.ndarray:
    for k, v in expected.items():
        if meta.get(k) != v:
            raise BadInputError(
                f"{folder / 'meta.json'}: {k} is {meta.get(k)!r}, expected {v!r}; remove the "
                "folder to encode the latents again"
            )
    path = folder / "latents.npy"
    try:
        arr = np.load(path, mmap_mode="r")
    except ValueError as e:
        raise BadInputError(f"{path}: not a readable latent array ({e}); remove it") from None
    if list(arr.shape) != meta["shape"] or str(arr.dtype) != "float32":
        raise BadInputError(
            f"{path}: shape {list(arr.shape)} {arr.dtype}, meta.json says {meta['shape']} float32"
        )
    return arr


@torch.no_grad()
def cache_latents(datamodule, autoencoder, batch_size: int = 64) -> Path:
    """The cache folder for this data set and autoencoder, encoding it first if absent."""

    datamodule.setup()
    data = datamodule.data
    n = int(data.meta["num_items"])
    folder = cache_dir(datamodule.root, autoencoder, data.meta["content_hash"])
    h = autoencoder.latent_size(datamodule.resolution)
    expected = {
        "content_hash": data.meta["content_hash"],
        "autoencoder": autoencoder_digest(autoencoder),
        "scaling_factor": float(getattr(autoencoder, "scaling_factor", 1.0)),
        "shape": [n, 2, autoencoder.latent_channels, h, h],
    }
    if (folder / "meta.json").is_file():
        _check(folder, json.loads((folder / "meta.json").read_text()), expected)
        return folder
    with data_lock(folder):
        if (folder / "meta.json").is_file():  # another job encoded it meanwhile
            _check(folder, json.loads((folder / "meta.json").read_text()), expected)
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"latents.npy.tmp-{os.getpid()}"
        out = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.float32, shape=tuple(expected["shape"])
        )
        device = next(autoencoder.parameters(), torch.empty(0)).device
        log.info("encoding %d items (and their mirror images) into %s", n, folder)
        images = data.arrays["images"]
        for s in tqdm(range(0, n, batch_size), desc="encoding latents", unit="batch"):
            x = torch.from_numpy(np.array(images[s : s + batch_size])).permute(0, 3, 1, 2)
            x = to_float(x).to(device)
            out[s : s + len(x), 0] = autoencoder.encode(x).float().cpu().numpy()
            out[s : s + len(x), 1] = autoencoder.encode(hflip(x, None)[0]).float().cpu().numpy()
        out.flush()
        del out
        os.replace(tmp, folder / "latents.npy")
        (folder / "meta.json").write_text(
            json.dumps(expected | {"root": str(datamodule.root)}, indent=1)
        )
    return folder


def open_latents(folder: Path) -> np.ndarray:
    """The (N, 2, C, h, w) array of a cache folder, checked against its meta.json."""
    folder = Path(folder)
    if not (folder / "meta.json").is_file():
        raise BadInputError(f"{folder}: no latent cache here (meta.json missing)")
    meta = json.loads((folder / "meta.json").read_text())
    return _check(folder, meta, {})
