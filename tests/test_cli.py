"""The other entry points through their real configs: prepare, evaluate, bench, W&B fallback."""

import json
from pathlib import Path

import numpy as np

from facediff.cli.train import train
from facediff.config import compose


def test_prepare_cli_writes_and_reuses(data_dir, tmp_path):
    from facediff.cli.prepare import prepare
    from tests.conftest import TINY

    data = [o for o in TINY if o.startswith("data.")]
    cfg = compose(
        "prepare", [f"paths.data_dir={tmp_path}", *data, "data.resolution=8", "workers=0"]
    )
    report = prepare(cfg)
    assert report["kept"] == 48 and report["skipped"] == 0
    assert (tmp_path / "synthfaces_8px" / "meta.json").is_file()
    assert prepare(cfg) is None  # already there: nothing redone
    cfg.force = True
    assert prepare(cfg)["kept"] == 48


def test_evaluate_cli_writes_protocol_and_table(make_cfg, tmp_path):
    from facediff.cli.evaluate import evaluate

    cfg = make_cfg("conditioner=attr_mask_concat", "callbacks.sample_grid.every_n_steps=0")
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    out = tmp_path / "eval"
    ecfg = compose(
        "evaluate",
        [
            f"ckpt_path={ckpt}",
            f"output_dir={out}",
            "num_conditions=4",
            "num_steps=2",
            "parser_steps=2",
            "classifier_steps=2",
            f"evaluators_dir={tmp_path / 'ev'}",
            "kid_subset_size=2",
        ],
    )
    rows = evaluate(ecfg)
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        metrics["protocol"]["num_conditions"] == 4 and metrics["protocol"]["num_steps_used"] == 2
    )
    assert metrics["protocol"]["split"] == "val" and "feature_extractor" in metrics["protocol"]
    own = rows["samples vs own conditions"]
    assert {"fid", "kid", "miou", "mask_acc", "attr_acc"} <= set(own)
    assert "| real images (ground truth) |" in (out / "report.md").read_text()


def test_bench_prints_side_by_side_figures(tmp_path, data_dir):
    from facediff.cli.bench import bench
    from tests.conftest import TINY

    cfg = compose(
        "bench",
        [
            f"paths.data_dir={data_dir}",
            f"paths.output_dir={tmp_path}",
            *TINY,
            "bench.num_faces=12",
            "bench.resolutions=[16]",
            "bench.loader_items=4",
            "bench.train_steps=1",
        ],
    )
    out = bench(cfg)
    assert (
        out["loader"][0]["prepared_samples_s"] > 0 and out["loader"][0]["png_decode_samples_s"] > 0
    )
    assert out["train_step"]["fp32_steps_s"] > 0 and out["train_step"]["bf16_steps_s"] > 0


def test_wandb_falls_back_to_offline(monkeypatch, tmp_path, caplog):
    from facediff.lit.wandb import wandb_logger

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_cfg"))
    cfg = {
        "_target_": "lightning.pytorch.loggers.WandbLogger",
        "project": "facediff",
        "save_dir": str(tmp_path),
        "offline": False,
    }
    logger = wandb_logger(cfg)
    assert logger._offline
    assert "logging offline instead" in caplog.text
    np.testing.assert_equal(logger._offline, True)
