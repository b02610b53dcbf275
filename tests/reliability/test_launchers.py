"""Hydra launchers and sweepers as users run them: joblib (2 parallel single-threaded jobs),
submitit's local executor (1 job), Optuna (2 trials); each job writes its metrics.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY

PROTOCOL = [
    "evaluation.num_conditions=4", "evaluation.diversity_conditions=0", "evaluation.inception=null",
    "evaluation.num_steps=2", "evaluation.kid_subset_size=2",
    "evaluation.parser_steps=2", "evaluation.classifier_steps=2",
]  # fmt: skip


def multirun(data_dir, tmp_path, *args, timeout=900):
    overrides = [o for o in TINY if not o.startswith("~")] + ["~callbacks.progress_bar"]
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable, "-m", "facediff.cli.train", "-m", f"paths.data_dir={data_dir}",
        f"hydra.sweep.dir={sweep}", *overrides, *PROTOCOL, "evaluate_after=true",
        f"evaluation.evaluators_dir={tmp_path / 'ev'}", "conditioner=multi", *args,
    ]  # fmt: skip
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    run = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp_path
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return sweep, run


def job_metrics(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/evaluation/metrics.json"))]


@pytest.mark.slow
def test_joblib_launcher_runs_two_single_threaded_jobs(data_dir, tmp_path):
    sweep, _ = multirun(data_dir, tmp_path, "+launcher=joblib", "seed=0,1")
    assert len(job_metrics(sweep)) == 2
    for job in ("0", "1"):
        cfg = (sweep / job / ".hydra" / "config.yaml").read_text()
        assert "threads: 1" in cfg
    assert "joblib" in (sweep / "multirun.yaml").read_text()


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_job(data_dir, tmp_path):
    sweep, _ = multirun(data_dir, tmp_path, "+launcher=submitit_local", "seed=0")
    assert len(job_metrics(sweep)) == 1
    assert list((sweep / ".submitit").glob("*/*_result.pkl"))  # submitit's own bookkeeping


@pytest.mark.slow
def test_optuna_sweeper_runs_two_trials_on_the_fidelity_metric(data_dir, tmp_path):
    sweep, run = multirun(data_dir, tmp_path, "+search=optuna", "hydra.sweeper.n_trials=2")
    runs = job_metrics(sweep)
    assert len(runs) == 2
    best = (sweep / "optimization_results.yaml").read_text()
    miou = [r["rows"]["samples vs own conditions"]["miou"] for r in runs]
    assert "best_value" in best and any(f"{m}"[:6] in best for m in miou)


@pytest.mark.slow
def test_sigterm_to_a_joblib_sweep_stops_its_workers_with_their_checkpoints(data_dir, tmp_path):
    """A scheduler's SIGTERM goes to facediff-train, not to joblib's worker processes: it is
    passed on, so the running jobs stop (each with a whole last.ckpt at a step > 0), no worker
    is left training into the sweep folder, and the job still queued does not start."""
    import signal
    import time

    import psutil
    import torch

    overrides = [o for o in TINY if not o.startswith("~")] + ["~callbacks.progress_bar"]
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable, "-m", "facediff.cli.train", "-m", f"paths.data_dir={data_dir}",
        f"hydra.sweep.dir={sweep}", *overrides, "trainer.max_steps=100000",
        "trainer.val_check_interval=5", "+launcher=joblib", "seed=0,1,2",
    ]  # fmt: skip
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    log = open(tmp_path / "sweep.log", "w")
    parent = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        ckpts = [sweep / j / "checkpoints" / "last.ckpt" for j in ("0", "1")]
        deadline = time.time() + 600
        while not all(c.is_file() for c in ckpts):  # both jobs are training
            assert parent.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
            assert time.time() < deadline, "the two jobs did not start training"
            time.sleep(1)
        workers = psutil.Process(parent.pid).children(recursive=True)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=180) != 0
        gone, alive = psutil.wait_procs(workers, timeout=60)
        assert not alive, f"workers still running after the sweep ended: {alive}"
    finally:
        if parent.poll() is None:
            parent.kill()
    text = (tmp_path / "sweep.log").read_text()
    # the first job to reach a step boundary saves and stops, saying so; once its Interrupted
    # reaches the parent, joblib ends the pool, so the other job may be ended mid-step, before
    # it says anything: its last.ckpt is then its last periodic one, whole (atomic writes)
    logs = [(sweep / job / "train.log").read_text() for job in ("0", "1")]
    assert any("SIGTERM received: " in log for log in logs), logs
    for job in ("0", "1"):
        step = torch.load(sweep / job / "checkpoints" / "last.ckpt", weights_only=True)
        assert 0 < step["global_step"] < 100000, text[-3000:]
    assert not (sweep / "2" / "checkpoints").exists(), "the queued job started after SIGTERM"


@pytest.mark.slow
def test_a_sweep_run_again_into_its_folder_resumes_each_job(data_dir, tmp_path):
    """ckpt_path=auto: the same sweep run again into the same hydra.sweep.dir (after a kill,
    here after its jobs stopped at step 2 of a longer schedule) resumes each job from its own
    last.ckpt instead of starting over."""
    from facediff import checkpoint

    common = ["ckpt_path=auto", "evaluate_after=false", "seed=0,1",
              "callbacks.sample_grid.every_n_steps=0"]  # fmt: skip
    sweep, _ = multirun(data_dir, tmp_path, *common, "trainer.max_steps=2")
    sweep, run = multirun(data_dir, tmp_path, *common, "trainer.max_steps=4")
    for job in ("0", "1"):
        log = (sweep / job / "train.log").read_text()
        assert "ckpt_path=auto: resuming from" in log, log[-2000:]
        assert checkpoint.load(sweep / job / "checkpoints" / "last.ckpt")["global_step"] == 4
