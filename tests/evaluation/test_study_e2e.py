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


def test_the_study_config_is_table4s_settings_each_evaluated_d_and_s():
    cfg = compose("train", ["+study=cviu_table4"])
    assert cfg.evaluate_after and cfg.task_name == "cviu_table4"
    # d. and s. sampling are evaluations of one model, not trainings of their own: on the flow
    # (CPU scale) flow Euler and the first-order SDE solver (DDIM eta 0 and 1 on its path)
    assert cfg.sampler.scheduler.path == "diffusers.FlowMatchEulerDiscreteScheduler"  # flow
    assert OmegaConf.to_container(cfg.evaluation.variants) == {
        "d": {"sampler": "flow_euler"},
        "s": {"sampler": "sde_dpmpp"},
    }
    assert cfg.evaluation.num_steps == 25  # both solvers, not their configs' own step counts
    study = OmegaConf.load(Path(__file__).parents[2] / "conf" / "study" / "cviu_table4.yaml")
    grid = {k: str(v).split(",") for k, v in study.hydra.sweeper.params.items()}
    settings = ["attr", "mask_pooled", "mask_spatial", "multi", "multi_plain"]
    assert grid == {"experiment": settings, "seed": ["0", "1"]}  # the experiments, swept
    expected = {  # Table 4's conditionings with P2 (a, m, m_np, mc); Fig. 2's P2 against plain
        "attr": (["attrs"], "P2Weighting"),
        "mask_pooled": (["mask"], "P2Weighting"),
        "mask_spatial": (["mask"], "P2Weighting"),
        "multi": (["attrs", "mask"], "P2Weighting"),
        "multi_plain": (["attrs", "mask"], "NoWeighting"),
    }
    for setting, (encoders, weighting) in expected.items():
        cfg = compose("train", ["+study=cviu_table4", f"experiment={setting}"])
        assert cfg.task_name == "cviu_table4" and cfg.evaluate_after, setting  # the study's
        assert list(cfg.model.conditioner.encoders) == encoders, setting
        assert cfg.model.loss.weighting._target_.endswith(weighting), setting
        mask = cfg.model.conditioner.encoders.get("mask")
        assert mask is None or mask.pooled == (setting == "mask_pooled"), setting


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
        "experiment=attr,multi", "seed=0,1",
    ]  # fmt: skip
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert len(list(sweep.glob("*/checkpoints/last.ckpt"))) == 4  # one training per setting x seed
    result = report_main([str(sweep)])
    rows = {r[0]: r for r in result["rows"]}
    d, s = "evaluation.sampler=flow_euler", "evaluation.sampler=sde_dpmpp"
    assert list(rows) == [  # each evaluated d. and s.
        f"experiment={setting} {solver}" for setting in ("attr", "multi") for solver in (d, s)
    ]
    assert all(r[1] == "2/2" for r in rows.values()) and not result["failed"]
    miou = result["header"].index("mIoU")
    assert rows[f"experiment=attr {d}"][miou] == "-"  # attributes only
    assert "±" in rows[f"experiment=multi {s}"][miou]


STUDIES = sorted(
    p.stem
    for p in (Path(__file__).parents[2] / "conf" / "study").glob("*.yaml")
    if not p.stem.endswith("_scale")  # cpu_scale, latent64_scale: the scales studies build on
)


@pytest.mark.slow
def test_every_study_names_its_grid_and_every_setting_builds(make_cfg, tmp_path):
    """Each study is a multirun with the protocol after each job; every point of its grid
    composes and builds its model (the grids are small: build them all). The 64 px studies
    load the small KL autoencoder (f4, or f2 with autoencoder=small_kl_f2): one of the same
    shape trained for 2 steps stands in for it."""
    import itertools

    from facediff.cli.train import train
    from facediff.config import instantiate

    ae_dirs = {}

    def small_ae(factor: int) -> Path:
        if factor not in ae_dirs:
            ae_dirs[factor] = tmp_path / f"ae_f{factor}"
            model = ["model=autoencoder_f2"] if factor == 2 else []
            out = f"model.output_dir={ae_dirs[factor]}"
            train(make_cfg("experiment=autoencoder", *model, "trainer.max_steps=2", out))
        return ae_dirs[factor]

    assert {
        "cviu_table4",
        "unet_dit",
        "infonce_seg",
        "routing_control",
        "objectives_solvers",
    } <= set(STUDIES)
    for study in STUDIES:
        notes = (Path(__file__).parents[2] / "docs" / "configs.md").read_text()
        section = notes.split(f"## `conf/study/{study}.yaml`")[1].split("\n## ")[0]
        assert "Paper scale" in section and "GPU-hours" in section, study  # its longer notes
        cfg = compose("train", [f"+study={study}"])
        assert cfg.evaluate_after and cfg.task_name == study
        raw = OmegaConf.load(Path(__file__).parents[2] / "conf" / "study" / f"{study}.yaml")
        grid = {k: str(v).split(",") for k, v in raw.hydra.sweeper.params.items()}
        keys = [k for k in grid if k != "seed"]
        for values in itertools.product(*(grid[k] for k in keys)):
            point = [f"{k}={v}" for k, v in zip(keys, values)]
            if cfg.autoencoder.get("pretrained") and "small_kl" in cfg.autoencoder.pretrained:
                point.append(f"autoencoder.pretrained={small_ae(cfg.latent.factor)}")
            instantiate(compose("train", [f"+study={study}", *point]).model)


@pytest.mark.parametrize("study", STUDIES)
def test_every_claim_names_points_of_its_study(study):
    """A study's declared claims compare points of its own grid (a swept value or an
    evaluation variant's option), and name a metric and an expectation facediff-report knows:
    a typo would leave a claim "not run" for ever."""
    from facediff.evaluation.comparisons import LABELS
    from facediff.evaluation.statistics import EXPECTATIONS
    from facediff.evaluation.study import override_value

    cfg = compose("train", [f"+study={study}"])
    claims = OmegaConf.to_container(cfg).get("claims") or []
    params = OmegaConf.load(Path(__file__).parents[2] / "conf" / "study" / f"{study}.yaml")
    points = {
        f"{k}={v.strip()}"
        for k, values in (params.hydra.sweeper.params or {}).items()
        for v in str(values).split(",")
    }
    for options in (cfg.evaluation.get("variants") or {}).values():
        points |= {f"evaluation.{k}={override_value(v)}" for k, v in options.items()}
    for claim in claims:
        for side in ("setting", "baseline"):
            assert set(claim[side].split()) <= points, (study, claim["name"], side)
        assert claim["metric"] in LABELS and claim["expect"] in EXPECTATIONS, claim["name"]
