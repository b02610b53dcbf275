"""DDP on the CPU: a multirun of 2-process (gloo) jobs writes one sweep folder; rank 1 joins
each job in rank 0's folder instead of running the sweep again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from facediff import checkpoint
from tests.conftest import TINY


@pytest.mark.slow  # 37 s: make test-full
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


def ddp_fit(data_dir, tmp_path, out, devices, *extra):
    overrides = [o for o in TINY if not o.startswith("~")] + ["~callbacks.progress_bar"]
    cmd = [
        sys.executable, "-m", "facediff.cli.train", f"paths.data_dir={data_dir}",
        f"hydra.run.dir={out}", *overrides, "conditioner=attr",
        "callbacks.sample_grid.every_n_steps=0", "trainer.val_check_interval=4",
        f"trainer.devices={devices}", "++trainer.strategy=ddp" if devices > 1 else "seed=0",
        "+callbacks.probe._target_=tests.reliability.ddp_probe.DDPProbe",
        f"+callbacks.probe.out_dir={tmp_path / 'probe'}", *extra,
    ]  # fmt: skip
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


@pytest.mark.slow
def test_ddp_ranks_see_disjoint_data_stay_equal_and_resume_on_one_or_two(data_dir, tmp_path):
    import json

    probe = tmp_path / "probe"
    ddp_fit(data_dir, tmp_path, tmp_path / "ddp", 2, "trainer.max_steps=4")
    r0, r1 = (json.loads((probe / f"rank{r}_step4.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    for (s0, items0), (s1, items1) in zip(r0["items"], r1["items"]):
        assert s0 == s1 and not set(items0) & set(items1)  # each step: disjoint items
    assert r0["weights"] == r1["weights"] and r0["ema"] == r1["ema"]
    ckpt = tmp_path / "ddp" / "checkpoints" / "last.ckpt"
    assert checkpoint.load(ckpt)["global_step"] == 4
    for devices in (1, 2):  # the DDP checkpoint resumes on one process and on two
        out = tmp_path / f"resume{devices}"
        ddp_fit(data_dir, tmp_path, out, devices, "trainer.max_steps=6", f"ckpt_path={ckpt}")
        assert checkpoint.load(out / "checkpoints" / "last.ckpt")["global_step"] == 6
        assert (probe / "rank0_step6.json").is_file()
        (probe / "rank0_step6.json").unlink()
