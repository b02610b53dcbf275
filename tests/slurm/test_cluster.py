"""A real SLURM cluster (tests/slurm/cluster.sh: slurmctld + two slurmd on this machine) and
torchrun across two "nodes": the paths users take when they outgrow one machine.

Each job is the README's "Scaling out" command at the tests' tiny sizes, on the CPU (gloo). The
cluster tests skip where no cluster is up; `.ci/run` starts one first, so CI runs them."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from facediff import checkpoint
from tests.conftest import TINY
from tests.reliability.test_faults import assert_same_training_state

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]
PROBE = "tests.reliability.ddp_probe.DDPProbe"


def cluster_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    run = subprocess.run(
        ["sinfo", "-h", "-N", "-p", "debug", "-o", "%N %t"], capture_output=True, text=True
    )
    return run.returncode == 0 and run.stdout.count(" idle") >= 2


needs_cluster = pytest.mark.skipif(
    not cluster_up(), reason="no local SLURM cluster: run `bash tests/slurm/cluster.sh` (root)"
)


def tiny_job(data_dir, *extra) -> list[str]:
    overrides = [o for o in TINY if not o.startswith("~")] + ["~callbacks.progress_bar"]
    return [
        f"paths.data_dir={data_dir}", *overrides, "conditioner=attr",
        "callbacks.sample_grid.every_n_steps=0", *extra,
    ]  # fmt: skip


def env() -> dict:
    return dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def slurm_cmd(sweep: Path, data_dir, *extra) -> list[str]:
    """The README's two-node command (launcher=slurm_ddp, trainer.num_nodes=2, CPU)."""
    return [
        sys.executable, "-m", "facediff.cli.train", "-m", "launcher=slurm_ddp",
        "trainer.accelerator=cpu", "trainer.num_nodes=2", "trainer.devices=1",
        "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=3", f"hydra.sweep.dir={sweep}",
        *tiny_job(data_dir, *extra),
    ]  # fmt: skip


def task_logs(sweep: Path) -> list[str]:
    """Each SLURM task's output (submitit's <job>_<task>_log.out and .err), by task (global
    rank)."""
    folder = next(p for p in (sweep / ".submitit").iterdir() if p.name.isdigit())
    tasks = sorted({int(p.name.split("_")[1]) for p in folder.glob("*_log.*")})
    return [
        (folder / f"{folder.name}_{t}_log.out").read_text()
        + (folder / f"{folder.name}_{t}_log.err").read_text()
        for t in tasks
    ]


def probes(folder: Path, step: int) -> list[dict]:
    return [json.loads((folder / f"rank{r}_step{step}.json").read_text()) for r in (0, 1)]


@needs_cluster
def test_two_node_job_rank_zero_work_once_nan_on_one_rank_skipped_by_both(tmp_path):
    """One 2-node job: rank 0 (SLURM_PROCID 0) prepares the data, trains the evaluators and
    evaluates, once; rank 1 waits for it and does none of it; a NaN loss on rank 1 only is
    skipped by both ranks (equal counts, equal weights, no hang)."""
    sweep, probe = tmp_path / "sweep", tmp_path / "probe"
    extra = [
        "trainer.max_steps=6", "evaluate_after=true", "evaluation.parser_steps=2",
        "evaluation.classifier_steps=2", "evaluation.num_conditions=4",
        "evaluation.kid_subset_size=2", "evaluation.diversity_conditions=0",
        "evaluation.num_steps=2", f"+callbacks.probe._target_={PROBE}",
        f"+callbacks.probe.out_dir={probe}",
        "+callbacks.poison._target_=tests.lit.helpers.PoisonSteps", "+callbacks.poison.at=[2]",
        "+callbacks.poison.rank=1",
    ]  # fmt: skip
    t0 = time.monotonic()
    run = subprocess.run(
        slurm_cmd(sweep, tmp_path / "data", *extra),
        capture_output=True, text=True, env=env(), timeout=900, cwd=tmp_path,
    )  # fmt: skip
    print(f"two-node job: {time.monotonic() - t0:.1f} s")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rank0, rank1 = task_logs(sweep)
    for rank0_work in ("preparing ", "training the face_parser", "sampling for the evaluation"):
        assert rank0_work in rank0 and rank0_work not in rank1, rank0_work
    assert "rank 1: waiting for rank 0 to prepare the job" in rank1
    r0, r1 = probes(probe, 6)
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["precision"] == r1["precision"]
    # the NaN on rank 1 at its third batch: both ranks skipped that one step, then went on
    assert r0["bad_steps"] == r1["bad_steps"] == [0, 1]
    assert r0["ema_steps"] == r1["ema_steps"] == 5
    assert r0["weights"] == r1["weights"] and r0["ema"] == r1["ema"]
    metrics = json.loads((sweep / "0" / "evaluation" / "metrics.json").read_text())
    assert metrics["num_samples"] >= 4  # the evaluation ran, once, into the job's folder


@needs_cluster
def test_scontrol_requeue_resumes_to_the_weights_of_the_job_left_alone(tmp_path):
    """The same 2-node job twice: left alone, and `scontrol requeue`d once its last.ckpt has
    passed step 4. SLURM stops it (SIGTERM: last.ckpt at a step boundary), runs it again with
    the same job id, ckpt_path=auto resumes it, and it ends with the same weights, EMA,
    optimizer state and data position as the job left alone."""
    data = tmp_path / "data"
    extra = ["trainer.max_steps=40", "callbacks.last_checkpoint.every_n_steps=2",
             "trainer.val_check_interval=100"]  # fmt: skip
    alone = tmp_path / "alone"
    t0 = time.monotonic()
    run = subprocess.run(
        slurm_cmd(alone, data, *extra), capture_output=True, text=True, env=env(),
        timeout=900, cwd=tmp_path,
    )  # fmt: skip
    print(f"job left alone: {time.monotonic() - t0:.1f} s")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    requeued = tmp_path / "requeued"
    t0 = time.monotonic()
    proc = subprocess.Popen(
        slurm_cmd(requeued, data, *extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=env(), cwd=tmp_path,
    )  # fmt: skip
    last = requeued / "0" / "checkpoints" / "last.ckpt"
    step = -1
    while proc.poll() is None and step < 4:
        if last.is_file():
            step = checkpoint.load(last)["global_step"]
        time.sleep(0.2)
    assert 4 <= step < 40, f"the job ended before it could be requeued (step {step})"
    job_id = next(p.name for p in (requeued / ".submitit").iterdir() if p.name.isdigit())
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    out, _ = proc.communicate(timeout=900)
    print(f"requeued job: {time.monotonic() - t0:.1f} s (requeued after step {step})")
    assert proc.returncode == 0, out[-4000:]
    rank0 = task_logs(requeued)[0]  # the second run of the job
    assert "ckpt_path=auto: resuming from" in rank0
    assert_same_training_state(
        checkpoint.load(alone / "0" / "checkpoints" / "last.ckpt"), checkpoint.load(last)
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_nodes_on_localhost(tmp_path):
    """torchrun --nnodes=2 (one process per "node", gloo, a fixed run folder): Lightning reads
    torchelastic's environment; rank 0 prepares the data, both train in step."""
    run_dir, probe, port = tmp_path / "run", tmp_path / "probe", free_port()
    procs = []
    t0 = time.monotonic()
    for node in (0, 1):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
            f"--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={port}",
            "-m", "facediff.cli.train", f"hydra.run.dir={run_dir}",
            *tiny_job(tmp_path / "data", "trainer.accelerator=cpu", "trainer.num_nodes=2",
                      "trainer.devices=1", "++trainer.strategy=ddp", "trainer.max_steps=4",
                      f"+callbacks.probe._target_={PROBE}", f"+callbacks.probe.out_dir={probe}"),
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env(),
                cwd=tmp_path,
            )  # fmt: skip
        )
    outs = [p.communicate(timeout=600)[0] for p in procs]
    print(f"torchrun, 2 nodes: {time.monotonic() - t0:.1f} s")
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    assert "preparing " in outs[0] and "preparing " not in outs[1]
    assert "rank 1: waiting for rank 0" in outs[1]
    r0, r1 = probes(probe, 4)
    assert r0["world_size"] == r1["world_size"] == 2 and r0["weights"] == r1["weights"]
    assert checkpoint.load(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 4
