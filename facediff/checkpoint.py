"""Checkpoint files: written atomically, checked for changed bytes, loaded without running code.

A checkpoint someone hands you is untrusted input. Every checkpoint facediff reads (resume,
sampling, evaluation, the cached evaluators, the W&B run id) goes through `load`:

1. the file must exist and be a torch zip archive (an empty or truncated file is named as such);
2. every record's CRC-32, which torch writes into the zip when it saves, is recomputed: bytes
   changed after the save (a bad copy, a disk error, an edit) fail with the record named
   (about 0.1 s per 100 MB, `make bench` prints the figure);
3. `torch.load(weights_only=True)`: tensors and plain containers only, so a pickle that would
   call `os.system` is refused instead of run. facediff has no way round this: a file that is
   refused must be converted by whoever trusts it, outside facediff.

This module owns the format of facediff's own entries in a Lightning checkpoint too:

- `ckpt["facediff"]`, the run record (`RunRecord`: the resolved config, what the data was, the
  code versions), written by `write_run_record` and read by `run_record` alone;
- pretrained weights named and hashed, not copied: what was loaded with `from_pretrained` and
  did not train (a first stage, SD 2's UNet under LoRA, its VAE and text encoder: ~5 GB, against
  a few MB of LoRA) is left out (`leave_out_frozen`), with where it came from and its sha256;
  reading puts those weights back from the model's own parts after checking they are the same
  ones (`restore_frozen`).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import pickle
import shutil
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from facediff.data.prepared import remove_stale_tmp

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged, unsafe or not what was expected; names the file."""


PRETRAINED = "facediff_pretrained"  # the attribute from_pretrained tags its models with


@dataclass(frozen=True)
class RunRecord:
    """`ckpt["facediff"]`: what a facediff-train run was (its resolved config, the data's
    `data_info`) and which code wrote it (`facediff.provenance.record`)."""

    config: dict
    data: dict
    code: str | None = None
    code_loaded: str | None = None

    @property
    def max_steps(self) -> int | None:
        """The run's trainer.max_steps; None where the run was not bounded by steps."""
        steps = (self.config.get("trainer") or {}).get("max_steps") or -1
        return int(steps) if steps > 0 else None


def write_run_record(ckpt: dict, config: dict, data: dict, code: dict) -> None:
    """Put the run record into a checkpoint being saved (`code`: provenance.record())."""
    ckpt["facediff"] = {"config": config, "data": data} | code


def run_record(ckpt: dict, where="checkpoint", what: str = "facediff-train") -> RunRecord:
    """The run record of a checkpoint; a CheckpointError naming `where` if it has none (a
    checkpoint not written by `what`)."""
    rec = ckpt.get("facediff")
    if not isinstance(rec, dict) or not rec.get("config") or not rec.get("data"):
        raise CheckpointError(
            f"{where}: not a {what} checkpoint (no 'facediff' run record in it: written by "
            "something else, or by an older facediff)"
        )
    return RunRecord(rec["config"], rec["data"], rec.get("code"), rec.get("code_loaded"))


def tmp_path_for(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def _root_oserror(e: BaseException) -> OSError | None:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            return e
        e = e.__cause__ or e.__context__
    return None


def atomic_save(obj, path) -> None:
    """torch.save to `<path>.tmp-<pid>`, fsync, rename over `path`: a kill mid-save leaves the
    previous file whole. A failed write removes its temp file and ends on the real cause (a
    full disk is an OSError ENOSPC naming the file and the free space)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path)
    tmp = tmp_path_for(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        cause = _root_oserror(e)
        if cause is not None and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(path.parent).free
            raise OSError(
                cause.errno,
                f"{path}: checkpoint not written, no space left on the device ({free:,} bytes "
                f"free); the previous {path.name}, if any, is intact",
            ) from e
        raise


def atomic_write_text(path, text: str) -> None:
    """A small text file written whole or not at all (temp file, fsync, rename): a reader on
    another node sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def state_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's state (every entry's name, dtype, shape and bytes, by name): the
    fingerprint that ties a checkpoint to the pretrained weights it was trained on."""
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        t = value.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def verify(path) -> None:
    """Raise CheckpointError when `path` is not a whole torch zip archive or a record's bytes
    do not match the CRC-32 stored when it was written."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"{path}: empty file (0 bytes; a full disk or an interrupted copy?), not a checkpoint"
        )
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                crc = 0
                try:
                    with z.open(info) as f:
                        while chunk := f.read(1 << 22):
                            crc = zlib.crc32(chunk, crc)
                except zipfile.BadZipFile as e:  # zipfile checks the CRC itself at the end
                    if "CRC" not in str(e):
                        raise
                    crc = None
                if crc != info.CRC:
                    raise CheckpointError(
                        f"{path}: record {info.filename} does not match its CRC-32: the file "
                        "changed after it was written; use another copy"
                    )
    except zipfile.BadZipFile as e:
        raise CheckpointError(
            f"{path}: not a torch checkpoint (not a whole zip archive: {e}; {size:,} bytes, "
            "truncated?)"
        ) from None
    except (zipfile.LargeZipFile, OSError, EOFError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e
    # a damaged header can ask zipfile for what it does not do (a compression method, a zip
    # version, an encryption flag) or confuse its decoders: still a damaged file, named
    except (NotImplementedError, RuntimeError, ValueError, zlib.error, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"{path}: not a torch checkpoint (a damaged zip archive: {type(e).__name__}: {e})"
        ) from None


def load(path: str | os.PathLike, what: str = "a checkpoint") -> dict:
    """The verified contents of a checkpoint file, loaded on the CPU without running code.

    Args:
        path: the file.
        what: what the caller expects, for the messages ("a facediff-train checkpoint").
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint ({what} expected)")
    verify(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused: it holds pickled objects other than tensors and plain containers, "
            "which could run code when loaded (torch weights_only). facediff writes none and loads "
            "none; if you wrote the file and trust it, convert it outside facediff to tensors "
            f"and plain containers. Detail: {str(e).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, ValueError, KeyError, IndexError, UnicodeDecodeError) as e:
        # records that pass their CRC but whose pickle or layout is inconsistent
        raise CheckpointError(f"{path}: unreadable as {what} ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not {what}")
    return obj


def pretrained_parts(model: nn.Module) -> dict[str, nn.Module]:
    """The parts loaded with from_pretrained (a first stage, a text encoder, SD's UNet), by
    their state-dict prefix."""
    return {n: m for n, m in model.named_modules() if getattr(m, PRETRAINED, None)}


def frozen_keys(prefix: str, part: nn.Module, state: dict) -> list[str]:
    """The part's state-dict entries that training does not change: its frozen parameters
    (and its buffers, where nothing in it trains and it is not in training mode)."""
    trainable = {f"{prefix}.{n}" for n, p in part.named_parameters() if p.requires_grad}
    params = {f"{prefix}.{n}" for n, _ in part.named_parameters()}
    keep_buffers = bool(trainable) or part.training
    return [
        k
        for k in state
        if k.startswith(prefix + ".") and k not in trainable and (k in params or not keep_buffers)
    ]


def leave_out_frozen(model: nn.Module, checkpoint: dict) -> None:
    """Drop the frozen pretrained entries from the checkpoint's state dict, recording each
    part's source, sha256 and keys as `pretrained_frozen`."""
    state, frozen = checkpoint.get("state_dict", {}), {}
    for prefix, part in pretrained_parts(model).items():
        keys = frozen_keys(prefix, part, state)
        for k in keys:
            del state[k]
        frozen[prefix] = {**getattr(part, PRETRAINED), "keys": keys}
    checkpoint["pretrained_frozen"] = frozen


def restore_frozen(model: nn.Module, checkpoint: dict) -> None:
    """Put the frozen pretrained weights the checkpoint left out back into its state dict,
    from the model's own parts, after checking they are the ones it was trained on (the same
    sha256); a CheckpointError naming the option to point elsewhere if not. A checkpoint that
    left nothing out (an evaluator's, an older one) is unchanged."""
    state, parts = checkpoint.get("state_dict", {}), pretrained_parts(model)
    for prefix, record in (checkpoint.get("pretrained_frozen") or {}).items():
        part = parts.get(prefix)
        if part is None:
            raise CheckpointError(
                f"the checkpoint's {prefix} was loaded from {record['source']}, but this "
                "model has no pretrained part there (a checkpoint of another model?)"
            )
        now = getattr(part, PRETRAINED)
        if now["sha256"] != record["sha256"]:
            raise CheckpointError(
                f"the checkpoint was trained on {record['source']} (sha256 "
                f"{record['sha256'][:12]}...), but {now['source']} now holds other weights "
                f"(sha256 {now['sha256'][:12]}...): the checkpoint does not hold them (it "
                "saves only what trained), so point the option at the weights it was "
                "trained with"
            )
        own = part.state_dict(prefix=prefix + ".")
        missing = [k for k in record["keys"] if k not in own]
        if missing:
            raise CheckpointError(
                f"the checkpoint's {prefix} ({record['source']}) has entries this model "
                f"lacks: {missing[:3]}; built with another facediff or peft version?"
            )
        state.update({k: own[k] for k in record["keys"]})


__all__ = [
    "PRETRAINED",
    "CheckpointError",
    "RunRecord",
    "atomic_save",
    "leave_out_frozen",
    "load",
    "remove_stale_tmp",
    "restore_frozen",
    "run_record",
    "state_digest",
    "verify",
    "write_run_record",
]
