"""W&B as users browse it, read back from the offline run's files: sample grids with their
conditions in the caption, the fidelity curves, the evaluation table as a wandb.Table, the
config with the parameter count and the precision; a resumed run continues the same run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import TINY
from tests.lit.helpers import records

PROTOCOL = [
    "evaluation.num_conditions=4", "evaluation.diversity_conditions=0", "evaluation.inception=null",
    "evaluation.num_steps=2", "evaluation.kid_subset_size=2",
    "evaluation.parser_steps=2", "evaluation.classifier_steps=2",
]  # fmt: skip


def run_contents(run_dir) -> tuple[dict, dict]:
    """(config, summary) of an offline run: the last value of each key, JSON-decoded."""
    (path,) = run_dir.glob("run-*.wandb")
    config, summary = {}, {}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "config":
            config |= {
                u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in r.config.update
            }
        elif kind == "history":
            summary |= {
                i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item
            }
        elif kind == "summary":
            summary |= {
                u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in r.summary.update
            }
    return config, summary


def run_train(data_dir, tmp_path, out, *extra):
    overrides = [o for o in TINY if not o.startswith(("~", "logger="))] + [
        "~callbacks.progress_bar"
    ]
    cmd = [
        sys.executable, "-m", "facediff.cli.train", f"paths.data_dir={data_dir}",
        f"hydra.run.dir={out}", *overrides, *PROTOCOL, "logger=wandb_csv",
        f"evaluation.evaluators_dir={tmp_path / 'ev'}", "conditioner=attr_mask_concat",
        "callbacks.sample_grid.every_n_steps=2", "callbacks.fidelity.every_n_steps=2",
        "callbacks.fidelity.num_conditions=4", "callbacks.fidelity.num_steps=2", *extra,
    ]  # fmt: skip
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    return run_dir


@pytest.mark.slow
def test_wandb_run_has_what_users_browse_and_resumes_into_the_same_run(data_dir, tmp_path):
    run_dir = run_train(data_dir, tmp_path, tmp_path / "a", "evaluate_after=true")
    files = run_dir / "files"
    config, summary = run_contents(run_dir)
    # what trainer.precision=auto chose on this CPU (bf16-mixed where bf16 is native)
    chosen = __import__("facediff.precision", fromlist=["p"]).choose_precision("cpu")[0]
    assert config["params_M"] > 0 and config["precision"] == chosen
    assert "conditioner" in config["config"]
    assert "fidelity/attr_acc" in summary and "fidelity/miou_shuffled" in summary
    assert summary["samples/captions"][0].startswith("real image, its mask, 2 samples per row")
    assert "row 1:" in summary["samples/captions"][0]
    assert list((files / "media" / "images").glob("samples_*.png"))
    (table,) = (files / "media" / "table" / "evaluation").glob("table_*.table.json")
    data = json.loads(table.read_text())
    assert data["columns"][:2] == ["row", "fid"] and len(data["data"]) == 3
    assert "evaluation/samples_vs_own_conditions/attr_acc" in summary
    # resume: the same W&B run id
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    again = run_train(
        data_dir, tmp_path, tmp_path / "b", f"ckpt_path={ckpt}", "trainer.max_steps=4"
    )
    assert again.name.split("-")[-1] == run_dir.name.split("-")[-1]
