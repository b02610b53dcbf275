"""W&B runs as users compare them: a sweep's jobs named by their own overrides, grouped by the
sweep, tagged with the experiment and study; read back from the offline runs' record files."""

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from wandb.proto import wandb_internal_pb2 as pb

from tests.conftest import TINY

BLOCK = 32768  # the run file's record log: 7-byte header, then 32 KiB blocks of records


def run_record(path: Path) -> pb.RunRecord:
    """The RunRecord of an offline W&B run file (run-<id>.wandb)."""
    data, pos, pending = path.read_bytes(), 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(pending + chunk)
            pending = b""
            if record.WhichOneof("record_type") == "run":
                return record.run
        elif kind in (2, 3):
            pending += chunk
        else:
            break
    raise AssertionError(f"{path}: no run record")


@pytest.mark.slow
def test_a_sweeps_runs_are_named_grouped_and_tagged(data_dir, tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [o for o in TINY if not o.startswith("~")] + ["~callbacks.progress_bar"]
    cmd = [
        sys.executable, "-m", "facediff.cli.train", "-m", *overrides, "experiment=attr",
        "seed=0,1", "trainer.max_steps=1", "logger=wandb", f"paths.data_dir={data_dir}",
        f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    records = {}
    for job in ("0", "1"):
        (path,) = (sweep / job / "wandb").glob("offline-run-*/run-*.wandb")
        records[job] = run_record(path)
    for job, seed in (("0", 0), ("1", 1)):
        r = records[job]
        name = r.display_name.split()  # the job's own overrides, the swept one last
        assert "experiment=attr" in name and name[-1] == f"seed={seed}", name
        assert not [o for o in name if o.startswith(("paths.", "logger", "hydra."))], name
        assert r.run_group == f"attr/{sweep.name}" and r.job_type == "train"
        assert list(r.tags) == ["attr", "experiment=attr"]
