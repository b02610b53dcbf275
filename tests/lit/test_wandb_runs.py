"""W&B runs as users compare them: a sweep's jobs named by their own overrides, grouped by the
sweep, tagged with the experiment and study; read back from the offline runs' record files."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from wandb.proto import wandb_internal_pb2 as pb

from tests.conftest import TINY
from tests.lit.helpers import records


def finished(path: Path, timeout: float = 60) -> Path:
    """The run file, once W&B has written its exit record (its service writes after
    `wandb.finish()` returns)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        if any(r.WhichOneof("record_type") == "exit" for r in records(path)):
            return path
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: no exit record after {timeout} s")
        time.sleep(0.5)


def run_record(path: Path) -> pb.RunRecord:
    for record in records(path):
        if record.WhichOneof("record_type") == "run":
            return record.run
    raise AssertionError(f"{path}: no run record")


def history(path: Path) -> dict[str, str]:
    """{key: its last value as JSON} over the run's history (a table: <key>/_type etc.)."""
    out = {}
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            out |= {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
    return out


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
        records[job] = run_record(finished(path))
    for job, seed in (("0", 0), ("1", 1)):
        r = records[job]
        name = r.display_name.split()  # the job's own overrides, the swept one last
        assert "experiment=attr" in name and name[-1] == f"seed={seed}", name
        assert not [o for o in name if o.startswith(("paths.", "logger", "hydra."))], name
        assert r.run_group == f"attr/{sweep.name}" and r.job_type == "train"
        assert list(r.tags) == ["attr", "experiment=attr"]


@pytest.mark.slow
def test_sample_tables_in_training_and_the_evaluation_in_the_checkpoints_run(make_cfg, tmp_path):
    """The fidelity check logs its samples as a table (their masks as segmentation layers);
    facediff-evaluate on the checkpoint logs its table into the run the checkpoint trained in."""
    from facediff.cli.evaluate import evaluate
    from facediff.cli.train import train
    from facediff.config import compose

    ev = f"evaluators_dir={tmp_path / 'ev'}"
    cfg = make_cfg(
        "conditioner=attr_mask_concat", "logger=wandb", "trainer.max_steps=2",
        "callbacks.fidelity.every_n_steps=2", "callbacks.fidelity.num_conditions=4",
        "callbacks.fidelity.parser_steps=2", "callbacks.fidelity.classifier_steps=2",
        f"callbacks.fidelity.{ev}",
    )  # fmt: skip
    os.environ.setdefault("WANDB_MODE", "offline")
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    (trained,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    finished(trained)
    assert history(trained)["fidelity/samples/_type"] == '"table-file"'
    assert history(trained)["fidelity/samples/nrows"] == "4"
    media = list((run_dir / "wandb").glob("offline-run-*/files/media/**/*.png"))
    assert media  # the sample images and their mask layers
    out = tmp_path / "eval"
    evaluate(
        compose(
            "evaluate",
            [
                f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"output_dir={out}",
                "evaluation.num_conditions=4", "evaluation.diversity_conditions=0",
                "evaluation.kid_subset_size=2", "evaluation.parser_steps=2",
                "evaluation.classifier_steps=2", f"evaluation.{ev}", "evaluation.inception=null",
            ],
        )
    )  # fmt: skip
    (evaluated,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    finished(evaluated)
    assert run_record(evaluated).run_id == run_record(trained).run_id  # the same W&B run
    assert run_record(evaluated).job_type == "evaluate"
    assert history(evaluated)["evaluation/table/_type"] == '"table-file"'
