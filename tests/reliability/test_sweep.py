"""A Hydra multirun in which one job fails: the other jobs still run and finish. The good job
also trains the evaluators from inside the Hydra app (the fidelity callback) and logs fidelity
for its one attribute with a classifier trained on all of them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from facediff import checkpoint
from tests.conftest import TINY


@pytest.mark.slow  # 20 s: make test-full
def test_failing_job_does_not_stop_the_sweep(data_dir, tmp_path):
    overrides = [o for o in TINY if not o.startswith("~")] + ["~callbacks.progress_bar"]
    cmd = [
        sys.executable, "-m", "facediff.cli.train", "-m",
        f"paths.data_dir={data_dir}", f"hydra.sweep.dir={tmp_path}", *overrides,
        "callbacks.sample_grid.every_n_steps=0", "conditioner=attr",
        "data.attributes=[Wings],[Smiling]", "data.num_attributes=1",
        "callbacks.fidelity.every_n_steps=2", "callbacks.fidelity.num_conditions=2",
        "callbacks.fidelity.num_steps=2", f"evaluation.evaluators_dir={tmp_path / 'ev'}",
        "evaluation.parser_steps=2", "evaluation.classifier_steps=2",
    ]  # fmt: skip
    env = dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode != 0  # the sweep reports the failure...
    assert "'Wings'" in log  # ...naming the culprit
    job0, job1 = Path(tmp_path / "0"), Path(tmp_path / "1")
    assert not (job0 / "checkpoints").exists()
    assert (job1 / "checkpoints" / "last.ckpt").is_file()  # the job after the failure ran
    csv_text = next(job1.rglob("metrics.csv")).read_text()
    assert "fidelity/attr_acc" in csv_text and "fidelity/miou" not in csv_text  # attrs only
    clf = checkpoint.load(tmp_path / "ev" / "attribute_classifier.ckpt")
    assert len(clf["attr_names"]) == 40 and "Smiling" in clf["attr_names"]
