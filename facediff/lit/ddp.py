"""Many processes, one job: rank-0 work done once, the other ranks waiting for it in the open.

A DDP job's processes start in one of three ways, and all three go through here:

- Lightning's own launcher (one node, `trainer.devices=N`): rank 0 runs facediff-train, and
  `trainer.fit` starts ranks 1.. by running the command line again. Rank 0 has done its work
  before they exist; they inherit what it decided through the environment (`SHARED_ENV`).
- SLURM (`srun`, `launcher=slurm_ddp`) or torchrun: every rank starts at once. Lightning's
  cluster environment (SLURM_PROCID, RANK) says which is global rank 0; it does the work
  before any process group forms, and the others wait for `<run dir>/.rank0.json`, which names
  this job attempt (so a requeued job never reads its previous attempt's file), for at most
  `ddp_wait_s` seconds, then stop with an error naming the file and the option.

Long rank-0 work (preparing data, training the evaluators) therefore never runs inside a
collective: there is no process group yet to time out (the NCCL timeouts diffusers' users meet
when rank 0 prepares data inside a barrier).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from facediff.checkpoint import atomic_write_text

log = logging.getLogger("facediff.train")

SHARED_ENV = "FACEDIFF_RANK0_SHARED"  # what rank 0 decided, for the ranks Lightning starts
MARKER = ".rank0.json"
DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RANK")


def global_rank(trainer) -> int:
    """This process's global rank as Lightning computes it (its cluster environment: SLURM,
    torchelastic, or its own launcher's LOCAL_RANK/NODE_RANK), before `fit` forms the group."""
    strategy = trainer.strategy
    if hasattr(strategy, "set_world_ranks"):  # DDP: node_rank * devices + local_rank
        strategy.set_world_ranks()
    return int(strategy.global_rank)


def job_attempt() -> str:
    """Names this attempt of this job, the same on every rank: the SLURM job and its restart
    count, or torchelastic's run id and restart count, or the rendezvous address."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env:
        return f"torchrun:{env['TORCHELASTIC_RUN_ID']}.{env.get('TORCHELASTIC_RESTART_COUNT', 0)}"
    if "SLURM_JOB_ID" in env:
        job = env.get("SLURM_ARRAY_JOB_ID", env["SLURM_JOB_ID"])
        task = env.get("SLURM_ARRAY_TASK_ID", "")
        return f"slurm:{job}{'_' + task if task else ''}.{env.get('SLURM_RESTART_COUNT', 0)}"
    return f"addr:{env.get('MASTER_ADDR', '')}:{env.get('MASTER_PORT', '')}"


def rank_zero_first(
    trainer, run_dir, work: Callable[[], dict], wait_s: float = 3600.0, poll_s: float = 0.5
) -> dict:
    """`work()` on global rank 0 only; every rank returns what it returned (a JSON-able dict).
    A single-process job just runs it."""
    if trainer.world_size <= 1:
        return work()
    rank, marker = global_rank(trainer), Path(run_dir) / MARKER
    attempt = job_attempt()
    if rank == 0:
        shared = work()
        atomic_write_text(marker, json.dumps({"attempt": attempt, "shared": shared}))
        os.environ[SHARED_ENV] = json.dumps(shared)  # inherited by the ranks fit starts
        return shared
    if SHARED_ENV in os.environ:  # started by rank 0's fit: it has done the work already
        return json.loads(os.environ[SHARED_ENV])
    log.info("rank %d: waiting for rank 0 to prepare the job (%s)", rank, marker)
    t0 = time.monotonic()
    while True:
        try:
            record = json.loads(marker.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            record = None
        if record and record.get("attempt") == attempt:
            log.info("rank %d: rank 0 is ready (%.0f s)", rank, time.monotonic() - t0)
            return record["shared"]
        if time.monotonic() - t0 > wait_s:
            raise TimeoutError(
                f"rank {rank}: rank 0 did not finish preparing the job within ddp_wait_s="
                f"{wait_s:g} s ({marker} does not name this attempt, {attempt}). Is the run "
                "folder on a file system every node shares (set hydra.run.dir to one)? Does "
                "rank 0's log show an error? Larger data: raise ddp_wait_s, or prepare ahead "
                "with facediff-prepare evaluators=true"
            )
        time.sleep(poll_s)


def agree(trainer, decision: bool) -> bool:
    """True on every rank when `decision` is True on every rank (one all-reduce; the decision
    itself where there is one process, or no trainer)."""
    if trainer is None or trainer.world_size <= 1:
        return decision
    return bool(trainer.strategy.reduce_boolean_decision(decision, all=True))


@contextmanager
def ddp_ranks_join_this_job():
    """Under a Hydra multirun, Lightning starts DDP ranks 1.. by running the command line again
    (`sys.argv` + `hydra.run.dir=<run dir>`). That command line holds `-m` and the sweep's
    value lists, so each rank > 0 would run the whole sweep again and write a sweep folder of
    its own. While fit starts them, the command line is this job's own overrides and the run
    dir is this job's output folder: rank > 0 joins the job in rank 0's folders. After fit,
    the process group and the launcher's environment variables (LOCAL_RANK, MASTER_PORT, ...)
    go, so the next job of the sweep starts its own ranks instead of waiting for old ones."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    env = {k: os.environ.get(k) for k in (*DDP_ENV, SHARED_ENV)}
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun:
        hc = HydraConfig.get()
        argv, run_dir = list(sys.argv), hc.run.dir
        sys.argv = [argv[0], *hc.overrides.task]
        with read_write(hc.run):
            hc.run.dir = hc.runtime.output_dir
    try:
        yield
    finally:
        if env[SHARED_ENV] is None:  # the next job in this process decides afresh
            os.environ.pop(SHARED_ENV, None)
        if multirun:
            sys.argv = argv
            with read_write(hc.run):
                hc.run.dir = run_dir
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            for k, v in env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


__all__ = ["agree", "ddp_ranks_join_this_job", "global_rank", "job_attempt", "rank_zero_first"]


def check_same_job(shared: dict, datamodule, precision: str) -> None:
    """A rank > 0 reads the data rank 0 hashed and trains in the precision rank 0 chose."""
    mine = datamodule.data.meta.get("content_hash")
    if shared.get("content_hash") != mine:
        raise RuntimeError(
            f"{datamodule.root}: this rank reads data with content hash {mine}, rank 0 prepared "
            f"{shared.get('content_hash')}: the ranks of one job must see the same data folder "
            "(a file system every node shares; paths.data_dir)"
        )
    if shared.get("precision") != precision:
        raise RuntimeError(
            f"trainer.precision: rank 0 chose {shared.get('precision')}, this rank {precision} "
            "(nodes of different kinds); set trainer.precision explicitly for the job"
        )
