"""DDP on the CPU: a multirun of 2-process (gloo) jobs writes one sweep folder; rank 1 joins
each job in rank 0's folder instead of running the sweep again."""

from __future__ import annotations

import os
import subprocess
import sys

from facediff import checkpoint
from tests.conftest import TINY


def test_ddp_multirun_writes_one_sweep_folder(data_dir, tmp_path):
    overrides = [o for o in TINY if not o.startswith("~")] + ["~callbacks.progress_bar"]
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable, "-m", "facediff.cli.train", "-m",
        f"paths.data_dir={data_dir}", f"hydra.sweep.dir={sweep}", *overrides,
        "conditioner=attr", "callbacks.sample_grid.every_n_steps=0",
        "trainer.devices=2", "++trainer.strategy=ddp", "seed=0,1",
    ]  # fmt: skip
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert not (tmp_path / "multirun").exists()  # no second, dated sweep folder from rank 1
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    for job in ("0", "1"):
        state = checkpoint.load(sweep / job / "checkpoints" / "last.ckpt")
        assert state["global_step"] == 2
        assert (sweep / job / "train_ddp_process_1.log").is_file()  # rank 1 ran in this job
