"""Jobs that share a data folder (a parallel sweep's first step), stale temp folders, and the
shipped options that a Lightning + Hydra user types."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from facediff.cli.train import train
from tests.conftest import TINY


def test_two_prepares_at_once_make_one_prepared_set(tmp_path):
    data = [o for o in TINY if o.startswith("data.")]
    cmd = [
        sys.executable,
        "-m",
        "facediff.cli.prepare",
        f"paths.data_dir={tmp_path}",
        *data,
        "workers=0",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    runs = []
    for i in range(2):
        runs.append(
            subprocess.Popen(
                [*cmd, f"hydra.run.dir={tmp_path / f'job{i}'}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
        )
        time.sleep(0.5)
    logs = [r.communicate(timeout=300)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], logs
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("job")) == [
        "synthfaces_16px",
        "synthfaces_16px.lock",
        "synthfaces_raw",
        "synthfaces_raw.lock",
    ]  # one raw folder, one prepared set, no temp folders
    assert (
        sum("already holds a prepared data set" in log or "meanwhile" in log for log in logs) >= 1
    )


def test_temp_folders_of_dead_processes_are_cleaned(make_cfg, tmp_path):
    dead = 2**22 + 12345  # beyond pid_max on Linux: no such process
    cfg = make_cfg(f"paths.data_dir={tmp_path}", "trainer.fast_dev_run=true")
    stale = [tmp_path / f"synthfaces_raw.tmp-{dead}", tmp_path / f"synthfaces_16px.tmp-{dead}"]
    for p in stale:
        (p / "CelebA-HQ-img").mkdir(parents=True)
    mine = tmp_path / f"synthfaces_16px.tmp-{os.getppid()}"  # a live process's: kept
    mine.mkdir()
    train(cfg)
    assert not any(p.exists() for p in stale) and mine.exists()


def test_logger_none_trains(make_cfg):
    cfg = make_cfg("callbacks.sample_grid.every_n_steps=0", "logger=none")
    assert not cfg.logger  # the shipped option, with the LearningRateMonitor in callbacks
    metrics = train(cfg)
    assert "train/loss" in metrics
    assert (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").is_file()
