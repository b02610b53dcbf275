"""Fuzzing the readers of files a user is handed (hypothesis, property-based).

Each reader gets a valid seed from the committed corpus (`tests/fuzz/corpus/`, written by
`python -m tests.fuzz.make_corpus`) with one to four mutations: bytes flipped, cut, inserted,
deleted, a span duplicated. Whatever the mutation, the reader must either give a result that is
right (the same tensors, labels in range, values in {-1, 0, 1}) or stop with facediff's own
named error (CheckpointError, BadInputError, MaskError) naming the file: never another
exception, never a hang (a deadline per example), never a silently wrong result.

`make test` runs each reader for FUZZ_QUICK examples; the slow tests (`.ci/run`) run each for
FUZZ_LONG examples, about a minute each on a 2-core CPU. Both are derandomised (the same
examples every run, so CI is reproducible); `FACEDIFF_FUZZ_RANDOM=1` explores new ones. A failure is reproduced by hypothesis's
printed `@reproduce_failure`; each one found became a row of the bad-input table
(tests/reliability/test_bad_inputs.py) once fixed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facediff import checkpoint
from facediff.app import MaskError, read_mask_file
from facediff.data.celebamask import CelebAMaskHQ
from facediff.data.labels import NUM_MASK_CLASSES
from facediff.data.maad_face import MaadFace
from facediff.data.prepared import BadInputError, PreparedDataset

CORPUS = Path(__file__).parent / "corpus"
FUZZ_QUICK, FUZZ_LONG = 15, 20000
NAMED = (checkpoint.CheckpointError, BadInputError, MaskError)


def apply(seed: bytes, ops) -> bytes:
    """The seed with each (kind, position, bytes) mutation applied in turn."""
    data = bytearray(seed)
    for kind, pos, blob in ops:
        pos = pos % (len(data) + 1)
        if kind == "flip" and data:
            i = pos % len(data)
            data[i] ^= blob[0] if blob and blob[0] else 0xFF
        elif kind == "cut":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = blob
        elif kind == "delete":
            del data[pos : pos + max(1, len(blob))]
        elif kind == "dup":
            data[pos:pos] = data[pos : pos + 1 + len(blob) * 4]
    return bytes(data)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "cut", "insert", "delete", "dup"]),
        st.integers(0, 1 << 20),
        st.binary(max_size=12),
    ),
    min_size=1,
    max_size=4,
)


def fuzz(examples: int, seed: bytes, check) -> None:
    """Run `check(mutated bytes)` on `examples` mutations of `seed`; it returns normally (a
    right result) or raises one of NAMED, which is checked to name a file."""

    @settings(
        max_examples=examples,
        deadline=5000,  # ms: a reader that loops on some input fails here
        database=None,
        derandomize=not os.environ.get("FACEDIFF_FUZZ_RANDOM"),  # CI: the same examples
        suppress_health_check=list(HealthCheck),
    )
    @given(OPS)
    def run(ops):
        data = apply(seed, ops)
        try:
            check(data)
        except NAMED as e:
            assert str(e), "an error without a message"

    run()


# ----------------------------------------------------------------------------- the readers
def reference_checkpoint(tmp: Path) -> tuple[Path, dict]:
    state = {
        "state_dict": {"w": torch.arange(64.0).reshape(8, 8), "b": torch.ones(3)},
        "global_step": 7,
        "facediff": {"config": {"model": {"_target_": "x"}}, "data": {"resolution": 16}},
    }
    path = tmp / "seed.ckpt"
    torch.save(state, path)
    return path, state


def check_checkpoint(tmp: Path):
    path, state = reference_checkpoint(tmp)
    seed = path.read_bytes()

    def check(data: bytes) -> None:
        target = tmp / "fuzzed.ckpt"
        target.write_bytes(data)
        got = checkpoint.load(target)
        # read: then it is the same checkpoint, bit for bit where it matters
        assert got["global_step"] == 7 and got["facediff"] == state["facediff"]
        for k, v in state["state_dict"].items():
            assert torch.equal(got["state_dict"][k], v), k

    return seed, check


def check_prepared(tmp: Path, name: str):
    """meta.json or one array of a prepared folder (the corpus's 4-item folder)."""
    folder = tmp / "prepared"
    shutil.copytree(CORPUS / "prepared", folder, dirs_exist_ok=True)
    seed = (CORPUS / "prepared" / name).read_bytes()
    good = PreparedDataset(CORPUS / "prepared", verify=True)
    good_arrays = {k: np.array(v) for k, v in good.arrays.items()}

    def check(data: bytes) -> None:
        (folder / name).write_bytes(data)
        ds = PreparedDataset(folder, verify=True)
        arrays = ds.arrays
        if name.endswith(".npy"):  # the content hash let it through: the same values
            key = name.removesuffix(".npy")
            assert np.array_equal(np.asarray(arrays[key]), good_arrays[key])
        for split in ds.meta["splits"]:
            idx = ds.split(split)
            assert ((idx >= 0) & (idx < len(ds))).all()

    return seed, check


def check_celebamask(tmp: Path, name: str):
    """The attribute file, the mapping file or one part mask of the corpus's raw archive."""
    raw = tmp / "celebamask"
    shutil.copytree(CORPUS / "celebamask", raw, dirs_exist_ok=True)
    seed = (CORPUS / "celebamask" / name).read_bytes()

    def check(data: bytes) -> None:
        (raw / name).write_bytes(data)
        source = CelebAMaskHQ(str(raw), mask_size=16)
        assert set(np.unique(source.values)) <= {0, 1}
        splits = source.splits()
        assert sum(len(v) for v in splits.values()) <= len(source)
        for i in range(len(source)):
            sample = source.load(i, 16)
            assert sample.mask.shape == (16, 16) and sample.mask.max() < NUM_MASK_CLASSES

    return seed, check


def check_maad(tmp: Path):
    raw = tmp / "maad"
    shutil.copytree(CORPUS / "maad", raw, dirs_exist_ok=True)
    seed = (CORPUS / "maad" / "MAAD_Face.csv").read_bytes()

    def check(data: bytes) -> None:
        (raw / "MAAD_Face.csv").write_bytes(data)
        source = MaadFace(str(raw / "vggface2"), str(raw / "MAAD_Face.csv"))
        assert set(np.unique(source.values)) <= {-1, 0, 1}
        for i in range(len(source)):
            assert source.load(i, 16).image.shape == (16, 16, 3)

    return seed, check


def check_upload(tmp: Path, name: str):
    seed = (CORPUS / "upload" / name).read_bytes()

    def check(data: bytes) -> None:
        (tmp / "upload.png").write_bytes(data)
        labels = read_mask_file(tmp / "upload.png", 16, resize=True)
        assert labels.shape == (16, 16) and 0 <= labels.min() <= labels.max() < NUM_MASK_CLASSES

    return seed, check


READERS = {
    "checkpoint.load": check_checkpoint,
    "prepared meta.json": lambda t: check_prepared(t, "meta.json"),
    "prepared attrs.npy": lambda t: check_prepared(t, "attrs.npy"),
    "CelebAMask-HQ attributes": lambda t: check_celebamask(t, "CelebAMask-HQ-attribute-anno.txt"),
    "CelebAMask-HQ mapping": lambda t: check_celebamask(t, "CelebA-HQ-to-CelebA-mapping.txt"),
    "CelebAMask-HQ part mask": lambda t: check_celebamask(
        t, "CelebAMask-HQ-mask-anno/0/00000_skin.png"
    ),
    "MAAD-Face CSV": check_maad,
    "app upload (label map)": lambda t: check_upload(t, "labels.png"),
    "app upload (colour mask)": lambda t: check_upload(t, "colours.png"),
}


@pytest.mark.parametrize("reader", list(READERS))
def test_fuzz_quick(reader, tmp_path):
    fuzz(FUZZ_QUICK, *READERS[reader](tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("reader", list(READERS))
def test_fuzz_long(reader, tmp_path):
    fuzz(FUZZ_LONG, *READERS[reader](tmp_path))
