"""A study end to end: `facediff-train -m +study=cviu_table4` (its grid cut to 2 settings x 2
seeds by command-line values, which take the place of the study's, and shrunk to tiny sizes)
then `facediff-report` on its folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from facediff.cli.report import run as report_main
from facediff.config import compose
from tests.conftest import TINY


def test_the_study_config_is_a_grid_with_the_evaluation_after_each_job():
    cfg = compose("train", ["+study=cviu_table4"])
    assert cfg.evaluate_after and cfg.task_name == "cviu_table4"
    study = OmegaConf.load(Path(__file__).parents[2] / "conf" / "study" / "cviu_table4.yaml")
    grid = {k: str(v).split(",") for k, v in study.hydra.sweeper.params.items()}
    assert grid == {
        "conditioner": ["attr", "mask_pooled", "mask_spatial", "multi"],  # a, m, m_np, mc
        "loss": ["p2", "plain"],
        "evaluation.eta": ["0.0", "1.0"],  # d. and s. sampling
        "seed": ["0", "1"],
    }
    for conditioner in grid["conditioner"]:  # every setting composes
        compose("train", ["+study=cviu_table4", f"conditioner={conditioner}", "loss=plain"])


@pytest.mark.slow
def test_study_then_report(data_dir, tmp_path):
    overrides = [o for o in TINY if not o.startswith("~")] + ["~callbacks.progress_bar"]
    sweep = tmp_path / "study"
    protocol = [
        "evaluation.num_conditions=4", "evaluation.diversity_conditions=0", "evaluation.inception=null",
        "evaluation.num_steps=2", "evaluation.kid_subset_size=2",
        "evaluation.parser_steps=2", "evaluation.classifier_steps=2",
        f"evaluation.evaluators_dir={tmp_path / 'ev'}",
    ]  # fmt: skip
    cmd = [
        sys.executable, "-m", "facediff.cli.train", "-m", "+study=cviu_table4",
        f"paths.data_dir={data_dir}", f"hydra.sweep.dir={sweep}", *overrides, *protocol,
        "conditioner=attr,multi", "loss=p2", "evaluation.eta=0.0", "seed=0,1",
    ]  # fmt: skip
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = report_main([str(sweep)])
    rows = {r[0]: r for r in result["rows"]}
    assert set(rows) == {"conditioner=attr", "conditioner=multi"}
    assert all(r[1] == "2/2" for r in rows.values()) and not result["failed"]
    assert rows["conditioner=attr"][result["header"].index("mIoU")] == "-"  # attributes only
    assert "±" in rows["conditioner=multi"][result["header"].index("mIoU")]


STUDIES = sorted(
    p.stem
    for p in (Path(__file__).parents[2] / "conf" / "study").glob("*.yaml")
    if p.stem != "cpu_scale"
)


@pytest.mark.slow
def test_every_study_names_its_grid_and_every_setting_builds():
    """Each study is a multirun with the protocol after each job; every point of its grid
    composes and builds its model (the grids are small: build them all)."""
    import itertools

    from facediff.config import instantiate

    assert {
        "cviu_table4",
        "unet_dit",
        "infonce_seg",
        "routing_control",
        "objectives_solvers",
    } <= set(STUDIES)
    for study in STUDIES:
        text = (Path(__file__).parents[2] / "conf" / "study" / f"{study}.yaml").read_text()
        assert "Paper scale" in text and "GPU-hours" in text, study
        cfg = compose("train", [f"+study={study}"])
        assert cfg.evaluate_after and cfg.task_name == study
        raw = OmegaConf.load(Path(__file__).parents[2] / "conf" / "study" / f"{study}.yaml")
        grid = {k: str(v).split(",") for k, v in raw.hydra.sweeper.params.items()}
        keys = [k for k in grid if k != "seed"]
        for values in itertools.product(*(grid[k] for k in keys)):
            point = [f"{k}={v}" for k, v in zip(keys, values)]
            instantiate(compose("train", [f"+study={study}", *point]).model)
