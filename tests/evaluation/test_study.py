"""facediff-report: multirun folders to one table, mean ± std over seeds, failed jobs listed,
protocols that differ refused."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from facediff.cli.report import run as report_main
from facediff.evaluation.study import report

PROTOCOL = {"split": "val", "num_conditions": 64, "num_steps": None, "sampler": None, "seed": 0}


def job(
    sweep: Path,
    num: int,
    overrides: list[str],
    scores: dict | None,
    protocol=None,
    where="evaluation",
    extra: dict | None = None,
):
    """A job folder as facediff-train -m writes it (where="evaluation": evaluation/metrics.json)
    or facediff-evaluate -m (where="": metrics.json in the job folder); `extra`: more top-level
    metrics.json entries (ckpt_step, code, ...)."""
    folder = sweep / str(num)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if scores is not None:
        rows = {
            "real images (ground truth)": {"attr_acc": 0.9},
            "samples vs own conditions": scores,
            "samples vs shuffled conditions": {
                k: v / 2 for k, v in scores.items() if k in ("attr_acc", "miou")
            },
        }
        (folder / where).mkdir(exist_ok=True)
        (folder / where / "metrics.json").write_text(
            json.dumps({"rows": rows, "protocol": protocol or PROTOCOL} | (extra or {}))
        )


def hydra_settings(folder: Path, config_name: str, cwd: Path | None = None) -> None:
    """The .hydra/hydra.yaml Hydra writes: which command (its primary config) and where it ran."""
    hydra = {"job": {"config_name": config_name}, "runtime": {"cwd": str(cwd or folder)}}
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": hydra}))


def sweep_dir(root: Path, name: str) -> Path:
    (root / name).mkdir(parents=True)
    (root / name / "multirun.yaml").write_text("hydra: {}\n")
    return root / name


def rows_with(out: dict, column: str) -> list[tuple[str, str, str]]:
    """(setting, jobs, the column's cell) of each row of a report."""
    at = out["header"].index(column)
    return [(r[0], r[1], r[at]) for r in out["rows"]]


def test_rows_per_setting_mean_std_over_seeds_across_folders(tmp_path):
    a, b = sweep_dir(tmp_path, "a"), sweep_dir(tmp_path, "b")
    common = "paths.data_dir=/d"
    job(
        a,
        0,
        [common, "conditioner=attr", "seed=0"],
        {"fid_domain": 10.0, "attr_acc": 0.80, "miou": 0.2},
    )
    job(
        a,
        1,
        [common, "conditioner=attr", "seed=1"],
        {"fid_domain": 14.0, "attr_acc": 0.84, "miou": 0.3},
    )
    job(
        a,
        2,
        [common, "conditioner=multi", "seed=0"],
        {"fid_domain": 8.0, "attr_acc": 0.90, "miou": 0.4},
    )
    job(a, 3, [common, "conditioner=multi", "seed=1"], None)  # failed
    job(
        b,
        0,
        [common, "conditioner=multi", "seed=1"],
        {"fid_domain": 9.0, "attr_acc": 0.86, "miou": 0.5},
    )
    out = report([a, b], tmp_path / "out")
    assert out["header"][:4] == ["setting", "jobs", "FID*", "attribute acc."]
    rows = {r[0]: r for r in out["rows"]}
    assert set(rows) == {"conditioner=attr", "conditioner=multi"}  # seed and common dropped
    assert out["common"] == [common]
    attr, multi = rows["conditioner=attr"], rows["conditioner=multi"]
    assert attr[1] == "2/2" and multi[1] == "2/3"
    assert attr[2] == f"{statistics.mean([10, 14]):.2f} ± {statistics.stdev([10, 14]):.2f}"
    assert multi[3] == f"{statistics.mean([90, 86]):.1f} ± {statistics.stdev([90, 86]):.1f}"
    assert out["header"][-1] == "mIoU (shuffled)" and attr[-1] == "12.5 ± 3.5"
    assert out["failed"] == [str(a / "3")]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| conditioner=multi | 2/3 |" in md and "Failed jobs" in md and str(a / "3") in md
    assert (
        (tmp_path / "out" / "report.csv")
        .read_text()
        .splitlines()[0]
        .startswith("setting,jobs,FID*")
    )


def test_jobs_of_different_protocols_are_refused_by_name(tmp_path, capsys):
    a = sweep_dir(tmp_path, "a")
    job(a, 0, ["seed=0"], {"attr_acc": 0.8})
    job(a, 1, ["seed=1"], {"attr_acc": 0.8}, PROTOCOL | {"num_conditions": 5000})
    with pytest.raises(
        ValueError, match=r"evaluation\.num_conditions differs: 64 in .*/0 but 5000 in .*/1"
    ):
        report([a], tmp_path / "out")
    with pytest.raises(SystemExit) as e:  # the command: exit 2, the reason on stderr
        report_main([str(a)])
    assert e.value.code == 2 and "evaluation.num_conditions differs" in capsys.readouterr().err


def test_an_option_older_jobs_lack_counts_as_its_default(tmp_path):
    """A metrics.json written before an option existed (no flip_check) matches a newer one
    with the option at its default, and not one with another value."""
    a = sweep_dir(tmp_path, "a")
    job(a, 0, ["seed=0"], {"attr_acc": 0.8})
    job(a, 1, ["seed=1"], {"attr_acc": 0.8}, PROTOCOL | {"flip_check": False})
    assert report([a], tmp_path / "out")["rows"][0][1] == "2/2"
    job(a, 2, ["seed=2"], {"attr_acc": 0.8}, PROTOCOL | {"flip_check": True})
    with pytest.raises(ValueError, match="evaluation.flip_check differs: False in"):
        report([a], tmp_path / "out")


def num_steps_sweep(tmp_path) -> Path:
    """Two jobs of one sweep over evaluation.num_steps (10, 25), one seed."""
    a = sweep_dir(tmp_path, "a")
    for i, steps in enumerate((10, 25)):
        job(
            a,
            i,
            [f"evaluation.num_steps={steps}", "seed=0"],
            {"attr_acc": 0.8},
            PROTOCOL | {"num_steps": steps},
        )
    return a


def test_an_evaluation_option_the_jobs_sweep_is_a_setting_not_a_clash(tmp_path):
    a = num_steps_sweep(tmp_path)
    out = report([a], tmp_path / "out")
    assert [r[0] for r in out["rows"]] == ["evaluation.num_steps=10", "evaluation.num_steps=25"]


def test_a_truncated_metrics_json_is_a_failed_job_named_and_the_rows_stay(tmp_path):
    """A job killed while writing metrics.json: listed as failed with the file and why, the
    other job keeps its row, named by its setting (not "(common overrides only)")."""
    a = num_steps_sweep(tmp_path)
    broken = a / "1" / "evaluation" / "metrics.json"
    broken.write_text(broken.read_text()[:40])  # cut mid-string
    out = report([a], tmp_path / "out")
    assert [r[:2] for r in out["rows"]] == [
        ["evaluation.num_steps=10", "1/1"],
        ["evaluation.num_steps=25", "0/1"],
    ]
    assert out["failed"] == [str(a / "1")]
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"{broken}: unreadable (JSONDecodeError" in md


def test_a_facediff_evaluate_sweep_is_read_too(tmp_path):
    """facediff-evaluate -m writes metrics.json in the job folder itself: solvers by steps on
    one checkpoint make one table, a row per solver and step count."""
    a = sweep_dir(tmp_path, "a")
    for i, (solver, steps) in enumerate([("ddim", 10), ("unipc", 10)]):
        overrides = [
            "ckpt_path=/c.ckpt",
            f"evaluation.sampler={solver}",
            "evaluation.num_steps=10",
        ]
        protocol = PROTOCOL | {"sampler": solver, "num_steps": steps}
        job(a, i, overrides, {"attr_acc": 0.8 + i / 100}, protocol, where="")
    out = report([a], tmp_path / "out")
    assert out["failed"] == [] and out["common"] == [
        "ckpt_path=/c.ckpt",
        "evaluation.num_steps=10",
    ]
    assert [r[:2] for r in out["rows"]] == [
        ["evaluation.sampler=ddim", "1/1"],
        ["evaluation.sampler=unipc", "1/1"],
    ]


def test_the_numbers_behind_the_cells_are_written_for_pandas(tmp_path):
    """results.csv: one line per setting, evaluation row and column, with mean, std and n as
    numbers in the column's own units (attribute accuracy 0.8, not "80.0 ± 1.4")."""
    import csv

    a = sweep_dir(tmp_path, "a")
    for seed, acc in ((0, 0.79), (1, 0.81)):
        job(a, seed, ["objective=eps", f"seed={seed}"], {"attr_acc": acc, "fid": 100.0 + seed})
    out = report([a], tmp_path / "out")
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    got = {(r["row"], r["column"]): (float(r["mean"]), float(r["std"]), int(r["n"])) for r in rows}
    own, shuffled = "samples vs own conditions", "samples vs shuffled conditions"
    assert got[(own, "attr_acc")] == pytest.approx((0.80, 0.0141421356, 2))
    assert got[(own, "fid")] == pytest.approx((100.5, 0.7071067812, 2))
    assert got[(shuffled, "attr_acc")] == pytest.approx((0.40, 0.0070710678, 2))  # halved (job())
    assert {r["setting"] for r in rows} == {"objective=eps"} and len(out["values"]) == len(rows)


def test_jobs_from_before_evaluation_solver_was_renamed_sampler_join_the_new_rows(tmp_path):
    """evaluation.solver is evaluation.sampler now: a job that recorded the old name (its
    override, its protocol, its variants) is read as the new name, in the same row and under
    the same protocol as a job of today."""
    a = sweep_dir(tmp_path, "a")
    old = {k: v for k, v in PROTOCOL.items() if k != "sampler"} | {"solver": "unipc"}
    job(a, 0, ["ckpt_path=/c.ckpt", "evaluation.solver=unipc", "seed=0"], {"attr_acc": 0.8}, old)
    new = PROTOCOL | {"sampler": "unipc"}
    job(a, 1, ["ckpt_path=/c.ckpt", "evaluation.sampler=unipc", "seed=1"], {"attr_acc": 0.9}, new)
    out = report([a], tmp_path / "out")
    assert rows_with(out, "attribute acc.") == [
        ("ckpt_path=/c.ckpt evaluation.sampler=unipc", "2/2", "85.0 ± 7.1")
    ]


def test_checkpoints_of_a_training_sweep_are_rows_by_their_setting_and_seed(tmp_path):
    """facediff-evaluate -m ckpt_path=<train job>/checkpoints/last.ckpt,... (solvers by steps on
    every seed of a study): each checkpoint stands for its training job's setting and seed, so
    the seeds make one row (mean ± std), the training's own evaluation options drop out (this
    job's protocol is the one measured), a relative path is read from the evaluate job's working
    directory, another checkpoint of the job is a setting of its own, and a checkpoint with no
    training job beside it stays a row by its path."""
    train = sweep_dir(tmp_path / "work", "train")
    for num, (objective, seed) in enumerate([("eps", 0), ("eps", 1), ("flow", 0)]):
        overrides = [f"objective={objective}", f"seed={seed}", "evaluation.num_steps=25"]
        job(train, num, overrides, None)
        (train / str(num) / "checkpoints").mkdir()
    handed = tmp_path / "handed.ckpt"
    ckpts = ["train/0/checkpoints/last.ckpt", str(train / "1/checkpoints/last.ckpt")]
    ckpts += ["train/2/checkpoints/last.ckpt", "train/2/checkpoints/step=300.ckpt", str(handed)]
    ev = sweep_dir(tmp_path, "ev")
    for num, ckpt in enumerate(ckpts):
        job(
            ev,
            num,
            [f"ckpt_path={ckpt}", "evaluation.num_steps=10"],
            {"fid": 100.0 + num},
            where="",
        )
        hydra_settings(ev / str(num), "evaluate", cwd=tmp_path / "work")
    out = report([ev], tmp_path / "out")
    assert rows_with(out, "FID") == [
        ("objective=eps", "2/2", "100.50 ± 0.71"),
        ("objective=flow", "1/1", "102.00"),
        ("objective=flow checkpoint=step=300", "1/1", "103.00"),
        (f"ckpt_path={handed}", "1/1", "104.00"),
    ]
    assert out["common"] == ["evaluation.num_steps=10"]


def test_a_checkpoint_of_a_run_that_stopped_early_is_a_row_of_its_own(tmp_path):
    """facediff-evaluate on a last.ckpt written before its run's max_steps (metrics.json:
    ckpt_step < ckpt_max_steps): never averaged with the finished seeds, its row says where
    it stopped."""
    train = sweep_dir(tmp_path, "train")
    for seed in (0, 1, 2):
        job(train, seed, ["objective=eps", f"seed={seed}"], None)
        (train / str(seed) / "checkpoints").mkdir()
    ev = sweep_dir(tmp_path, "ev")
    for seed, step in [(0, 600), (1, 600), (2, 300)]:
        ckpt = train / str(seed) / "checkpoints" / "last.ckpt"
        progress = {"ckpt_path": str(ckpt), "ckpt_step": step, "ckpt_max_steps": 600}
        job(ev, seed, [f"ckpt_path={ckpt}"], {"fid": 100.0 + seed}, where="", extra=progress)
        hydra_settings(ev / str(seed), "evaluate")
    out = report([ev], tmp_path / "out")
    assert rows_with(out, "FID") == [
        ("(common overrides only)", "2/2", "100.50 ± 0.71"),
        ("stopped_at_step=300", "1/1", "102.00"),
    ]
    assert out["common"] == ["objective=eps"]


def test_the_code_versions_the_jobs_ran_are_listed(tmp_path):
    """metrics.json records the code that measured it: the report counts the versions and
    names the jobs whose checkout changed while they ran (code != code_loaded)."""
    a = sweep_dir(tmp_path, "a")
    versions = [("abc", "abc"), ("abc", "abc"), ("def", "abc"), None]
    for num, v in enumerate(versions):
        code = {"code": v[0], "code_loaded": v[1]} if v else None
        job(a, num, ["objective=eps", f"seed={num}"], {"fid": 100.0 + num}, extra=code)
    md = report([a], tmp_path / "out")["markdown"]
    assert "Code: abc (2 jobs), def (1 jobs); the other finished jobs did not record theirs." in md
    assert (
        f"The checkout changed while these jobs ran (their process had imported other code than the configs it then read): {a / '2'}."
        in md
    )


def test_a_training_run_resumed_from_a_checkpoint_keeps_its_own_setting(tmp_path):
    """facediff-train -m ckpt_path=<job>/checkpoints/last.ckpt trainer.max_steps=...: the resumed
    run is a setting of its own (its ckpt_path= names it), not a copy of the run it resumed;
    only facediff-evaluate's jobs stand for the training that wrote their checkpoint."""
    train = sweep_dir(tmp_path, "train")
    job(train, 0, ["objective=eps", "seed=0"], {"fid": 300.0})
    (train / "0" / "checkpoints").mkdir()
    hydra_settings(train / "0", "train")
    ckpt = f"ckpt_path={train / '0' / 'checkpoints' / 'last.ckpt'}"
    more = sweep_dir(tmp_path, "more")
    job(more, 0, [ckpt, "trainer.max_steps=1200", "seed=0"], {"fid": 250.0})
    hydra_settings(more / "0", "train")
    ev = sweep_dir(tmp_path, "ev")
    job(ev, 0, [ckpt], {"fid": 310.0}, where="")
    hydra_settings(ev / "0", "evaluate")
    out = report([train, more, ev], tmp_path / "out")
    assert rows_with(out, "FID") == [
        ("objective=eps", "2/2", "305.00 ± 7.07"),
        (f"{ckpt} trainer.max_steps=1200", "1/1", "250.00"),
    ]


def test_one_setting_whatever_the_order_of_its_overrides(tmp_path):
    """A variant's options come in its config's order, a sweep's in the command line's: the same
    options in another order are the same setting, one row named as first seen."""
    a = sweep_dir(tmp_path, "a")
    job(a, 0, ["evaluation.sampler=ddim", "evaluation.num_steps=10", "seed=0"], {"fid": 10.0})
    job(a, 1, ["evaluation.num_steps=10", "evaluation.sampler=ddim", "seed=1"], {"fid": 12.0})
    job(a, 2, ["evaluation.num_steps=50", "evaluation.sampler=unipc", "seed=0"], {"fid": 20.0})
    out = report([a], tmp_path / "out")
    assert rows_with(out, "FID") == [
        ("evaluation.sampler=ddim evaluation.num_steps=10", "2/2", "11.00 ± 1.41"),
        ("evaluation.num_steps=50 evaluation.sampler=unipc", "1/1", "20.00"),
    ]


def test_a_study_and_its_solvers_by_steps_make_one_table(tmp_path):
    """The training sweep (its protocol in the study's config) and facediff-evaluate on its
    checkpoints (the same protocol given on the command line, a solver swept) in one report:
    an evaluation override every job measured alike does not name a row; the solver does."""
    train = sweep_dir(tmp_path, "train")
    protocol = PROTOCOL | {"inception": "fid_helper"}
    for seed in (0, 1):
        job(train, seed, ["objective=eps", f"seed={seed}"], {"fid": 300.0 + seed}, protocol)
        (train / str(seed) / "checkpoints").mkdir()
    ev = sweep_dir(tmp_path, "ev")
    for seed in (0, 1):
        overrides = [
            f"ckpt_path={train / str(seed) / 'checkpoints' / 'last.ckpt'}",
            "evaluation.inception=fid_helper",
            "evaluation.sampler=unipc",
        ]
        metrics = {"fid": 200.0 + seed}
        job(ev, seed, overrides, metrics, protocol | {"sampler": "unipc"}, where="")
    # a third, still sampling its variant: listed where facediff-evaluate will write it
    job(ev, 2, [f"ckpt_path={train / '0' / 'checkpoints' / 'last.ckpt'}"], None)
    (ev / "2" / "evaluate.log").write_text("")
    (ev / "2" / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump(
            {"evaluation": {"variants": {"u10": {"sampler": "unipc", "num_steps": 10}}}}
        )
    )
    out = report([train, ev], tmp_path / "out")
    assert out["failed"] == [str(ev / "2" / "u10")]
    assert "inception=fid_helper" in out["markdown"]  # one value: not "(by row)"
    assert rows_with(out, "FID") == [
        ("(common overrides only)", "2/2", "300.50 ± 0.71"),
        ("evaluation.sampler=unipc", "2/2", "200.50 ± 0.71"),
        ("evaluation.num_steps=10 evaluation.sampler=unipc", "0/1", "-"),
    ]
    assert out["common"] == ["objective=eps"]


def test_each_evaluation_variant_of_a_job_is_a_row_as_if_swept(tmp_path):
    """A job with evaluation.variants ({d: {eta: 0.0}, s: {eta: 1.0}}) writes
    evaluation/<variant>/metrics.json; the report reads each as a job of the setting with the
    variant's options added, so the rows are those a sweep of evaluation.eta would give; a
    variant that did not finish is listed as failed, not dropped."""
    a = sweep_dir(tmp_path, "a")
    variants = {"d": {"eta": 0.0}, "s": {"eta": 1.0}}
    given = "evaluation.variants={d:{eta:0.0},s:{eta:1.0}}"  # on the command line: not a setting
    for num, (setting, seed) in enumerate([("a", 0), ("a", 1), ("mc", 0), ("mc", 1)]):
        folder = a / str(num)
        job(
            a,
            num,
            [f"+cviu_setting={setting}", f"seed={seed}"] + [given] * (setting == "mc"),
            None,
        )
        (folder / ".hydra" / "config.yaml").write_text(
            yaml.safe_dump({"seed": seed, "evaluation": {"variants": variants}})
        )
        for name, options in variants.items():
            if (setting, seed, name) == ("mc", 1, "s"):
                continue  # the job stopped before its second evaluation
            (folder / "evaluation" / name).mkdir(parents=True)
            metrics = {
                "rows": {
                    "samples vs own conditions": {
                        "attr_acc": 0.8 + options["eta"] / 10 + seed / 100
                    }
                },
                "protocol": PROTOCOL | options,  # the variant's options over the rest
                "variant": {"name": name, "options": options},
            }
            (folder / "evaluation" / name / "metrics.json").write_text(json.dumps(metrics))
    out = report([a], tmp_path / "out")
    assert rows_with(out, "attribute acc.") == [
        ("+cviu_setting=a evaluation.eta=0.0", "2/2", "80.5 ± 0.7"),
        ("+cviu_setting=a evaluation.eta=1.0", "2/2", "90.5 ± 0.7"),
        ("+cviu_setting=mc evaluation.eta=0.0", "2/2", "80.5 ± 0.7"),
        ("+cviu_setting=mc evaluation.eta=1.0", "1/2", "90.0"),
    ]
    assert out["failed"] == [str(a / "3" / "evaluation" / "s")]
    assert "eta=(by row)" in out["markdown"]  # not the first job's value


@pytest.mark.parametrize(
    "value, text",
    [(0.0, "0.0"), (None, "null"), (True, "true"), ("dpmpp_2m", "dpmpp_2m"),
     ({"attrs": 3.0, "mask": 1.5}, "{attrs:3.0,mask:1.5}")],
)  # fmt: skip
def test_variant_options_are_written_as_hydra_overrides(value, text):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from facediff.evaluation.study import override_value

    assert override_value(value) == text
    parsed = OverridesParser.create().parse_override(f"evaluation.x={text}").value()
    assert parsed == value  # Hydra reads the override back as the variant's value


def test_not_a_multirun_folder(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"not a Hydra multirun folder \(no multirun\.yaml\)"
    ):
        report([tmp_path], tmp_path / "out")


def test_the_table_goes_to_wandb_as_a_table(tmp_path):
    """facediff-report DIR --wandb, as a user runs it (its own process: W&B's global state
    stays out of the test process)."""
    a = claim_study(tmp_path / "sweeps", CLAIMS)
    env = dict(os.environ, WANDB_DIR=str(tmp_path), WANDB_MODE="offline")
    # as the console script runs it: sys.exit(main()) must exit 0
    script = "import sys; from facediff.cli.report import main; sys.exit(main())"
    cmd = [sys.executable, "-c", script, str(a), "--wandb"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "| experiment=attr | 3/3 |" in run.stdout and "W&B table:" in run.stdout
    tables = list(tmp_path.rglob("study_*.table.json"))
    assert tables and json.loads(tables[0].read_text())["columns"][:2] == ["setting", "jobs"]
    claims = json.loads(next(tmp_path.rglob("claims_*.table.json")).read_text())
    verdicts = [row[claims["columns"].index("verdict")] for row in claims["data"]]
    assert verdicts == ["held", "inconclusive"]
    assert list(tmp_path.rglob("metrics_*.png")), "the figure of metrics by setting"


def claim_study(tmp_path, claims=None, variants: dict | None = None) -> Path:
    """attr and multi, 3 seeds each: multi's mIoU 0.10 higher on every seed (plus noise), its
    FID about the same; the study config declares `claims`. `variants`: each job evaluated
    once per evaluation variant (<job>/evaluation/<name>/metrics.json), with the same scores."""
    sweep = sweep_dir(tmp_path, "study")
    noise = [0.01, -0.02, 0.015]
    for i, (setting, seed) in enumerate((s, d) for s in ("attr", "multi") for d in range(3)):
        up = 0.10 if setting == "multi" else 0.0
        scores = {
            "miou": 0.3 + up + noise[seed] + (0.004 * seed if up else 0),
            "fid": 100.0 + 3 * noise[seed] * 100 * (1 if up else -1),
            "fid_ci_low": 90.0,
            "fid_ci_high": 110.0,
        }
        job(sweep, i, [f"experiment={setting}", f"seed={seed}"], scores if not variants else None)
        for name, options in (variants or {}).items():
            (sweep / str(i) / "evaluation" / name).mkdir(parents=True)
            metrics = {
                "rows": {"samples vs own conditions": scores},
                "protocol": PROTOCOL | options,
                "variant": {"name": name, "options": options},
            }
            (sweep / str(i) / "evaluation" / name / "metrics.json").write_text(json.dumps(metrics))
        config = {"claims": claims or []} | (
            {"evaluation": {"variants": variants}} if variants else {}
        )
        (sweep / str(i) / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    return sweep


CLAIMS = [
    {"name": "mc raises mIoU", "setting": "experiment=multi", "baseline": "experiment=attr",
     "metric": "miou", "expect": "higher"},
    {"name": "mc lowers FID", "setting": "experiment=multi", "baseline": "experiment=attr",
     "metric": "fid", "expect": "lower"},
]  # fmt: skip


def test_claims_get_a_verdict_per_evaluation_variant(tmp_path):
    """cviu_table4 evaluates each training twice (evaluation.variants d. and s.): its config
    is two folders above each variant's metrics.json, and each variant's pair of rows gets the
    claim's verdict."""
    variants = {"d": {"eta": 0.0}, "s": {"eta": 1.0}}
    sweep = claim_study(tmp_path, CLAIMS[:1], variants)
    out = report_main([str(sweep), "--out", str(tmp_path / "o")])
    assert [(c["row"], c["row_baseline"], c["verdict"]) for c in out["claims"]] == [
        ("experiment=multi evaluation.eta=0.0", "experiment=attr evaluation.eta=0.0", "held"),
        ("experiment=multi evaluation.eta=1.0", "experiment=attr evaluation.eta=1.0", "held"),
    ]


def test_intervals_paired_differences_and_computed_verdicts(tmp_path):
    from scipy import stats

    sweep = claim_study(tmp_path, CLAIMS)
    out = report_main([str(sweep), "--baseline", "experiment=attr", "--out", str(tmp_path / "o")])
    attr, multi = out["summary"]
    m_attr = [0.31, 0.28, 0.315]
    lo, hi = stats.t.interval(0.95, 2, loc=statistics.mean(m_attr), scale=stats.sem(m_attr))
    assert attr["n"] == 3 and attr["experiment"] == "attr"
    assert (attr["miou_ci_low"], attr["miou_ci_high"]) == pytest.approx((lo, hi))
    by_name = {c["name"]: c for c in out["claims"]}
    raise_miou = by_name["mc raises mIoU"]
    diffs = [0.10, 0.104, 0.108]
    lo, hi = stats.t.interval(0.95, 2, loc=statistics.mean(diffs), scale=stats.sem(diffs))
    assert raise_miou["n"] == 3 and raise_miou["mean"] == pytest.approx(0.104)
    assert (raise_miou["ci_low"], raise_miou["ci_high"]) == pytest.approx((lo, hi))
    assert raise_miou["verdict"] == "held" and raise_miou["detectable"] > 0
    assert by_name["mc lowers FID"]["verdict"] == "inconclusive"
    against = {(c["setting"], c["metric"]) for c in out["comparisons"]}
    assert against == {("experiment=multi", "miou"), ("experiment=multi", "fid")}
    md = (tmp_path / "o" / "report.md").read_text()
    assert "| mc raises mIoU | experiment=multi | experiment=attr | mIoU | 3 |" in md
    assert "**held**" in md and "**inconclusive**" in md
    lines = md.splitlines()
    for i, line in enumerate(lines):  # every table's separator has its header's columns
        if line.startswith("|---"):
            assert line.count("|") == lines[i - 1].count("|"), lines[i - 1]
    import csv

    with open(tmp_path / "o" / "study.csv") as f:
        line = next(csv.DictReader(f))
    assert float(line["miou_mean"]) == pytest.approx(statistics.mean(m_attr))
    assert {"fid_mean", "fid_std", "fid_ci_low", "fid_ci_high", "n", "experiment"} <= set(line)
    with open(tmp_path / "o" / "jobs.csv") as f:
        jobs = list(csv.DictReader(f))
    assert len(jobs) == 6 and jobs[0]["fid_ci_low"] == "90.0"
    assert (tmp_path / "o" / "metrics.png").stat().st_size > 1000


def test_a_baseline_no_row_has_is_named(tmp_path, capsys):
    sweep = claim_study(tmp_path)
    with pytest.raises(SystemExit):
        report_main([str(sweep), "--baseline", "experiment=mask"])
    assert "--baseline 'experiment=mask': no row has these options" in capsys.readouterr().err


def test_figures_of_different_sample_counts_are_refused_unless_declared(tmp_path):
    """Two folders scored on 16 and 8 conditions (each set on its command line) are refused by
    name; a study that declares num_conditions a row option gets its rows."""
    a, b = sweep_dir(tmp_path, "a"), sweep_dir(tmp_path, "b")
    for folder, n in ((a, 16), (b, 8)):
        job(folder, 0, [f"evaluation.num_conditions={n}", "seed=0"], {"fid": 50.0},
            PROTOCOL | {"num_conditions": n})  # fmt: skip
    with pytest.raises(ValueError, match="evaluation.num_conditions differs: 16 in .* but 8"):
        report([a, b], tmp_path / "out")
    for folder in (a, b):
        config = {"row_options": ["evaluation.num_conditions"]}
        (folder / "0" / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    out = report([a, b], tmp_path / "out")
    assert [r[0] for r in out["rows"]] == [
        "evaluation.num_conditions=16",
        "evaluation.num_conditions=8",
    ]


def test_figures_scored_at_two_resolutions_are_refused(tmp_path):
    a = sweep_dir(tmp_path, "a")
    for i, r in enumerate((32, 64)):
        job(a, i, [f"data.resolution={r}", "seed=0"], {"fid": 50.0})
    with pytest.raises(ValueError, match="data.resolution differs: 32 in .* but 64"):
        report([a], tmp_path / "out")


def test_time_to_quality_from_the_monitors_log(tmp_path):
    """The fidelity monitor's log (fidelity/* with their real-image ceilings and time/train_s,
    a resumed run in a second CSV version) gives curves against step and against time, and
    the first measurement where every target fraction of the ceiling was reached."""
    sweep = sweep_dir(tmp_path, "ttq")
    job(sweep, 0, ["seed=0"], {"attr_acc": 0.8, "miou": 0.5})
    head = "step,fidelity/attr_acc,fidelity/attr_acc_real,fidelity/miou,fidelity/miou_real,"
    head += "fidelity/miou_decoded,fidelity/miou_real_32px,time/train_s,train/loss\n"
    logs = [  # attr 0.86/0.9 = 95.6% at step 199, but mIoU 0.5/0.6 = 83% there: not yet
        "99,0.80,0.9,0.30,0.6,0.57,0.54,60.0,\n100,,,,,,,,0.5\n"
        "199,0.86,0.9,0.50,0.6,0.57,0.54,130.0,\n",
        "299,0.85,0.9,0.55,0.6,0.57,0.54,200.0,\n399,0.88,0.9,0.56,0.6,0.57,0.54,270.0,\n",
    ]  # 299: attr 94.4%
    for version, rows in enumerate(logs):
        folder = sweep / "0" / "csv" / f"version_{version}"
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text(head + rows)
    out = report([sweep], tmp_path / "o")
    from facediff.evaluation.comparisons import _curve, time_to_quality

    curve = _curve(sweep / "0")
    assert [p["step"] for p in curve["fidelity/miou"]] == [99, 199, 299, 399]
    t = time_to_quality(curve, {"attr_acc": 0.95, "miou": 0.90})
    # 299: attr 0.85 / 0.9 = 94.4% < 95%; 399: 97.8% and 0.56 / 0.6 = 93.3%: the first
    assert (t["step"], t["seconds"]) == (399, 270.0)
    assert t["reached"] == pytest.approx({"attr_acc": 0.88 / 0.9, "miou": 0.56 / 0.6})
    never = time_to_quality(curve, {"attr_acc": 0.99, "miou": 0.5})
    assert never["step"] is None and never["best_step"] == 399
    md = (tmp_path / "o" / "report.md").read_text()
    assert "4.5 min, step 399 (attr_acc 97.8% of 0.900, miou 93.3% of 0.600; the first " in md
    assert "stage's round trip reaches miou 95.0%; the real images at 32 px miou 90.0%)" in md
    from facediff.evaluation.comparisons import is_ceiling

    assert [k for k in curve if not is_ceiling(k)] == ["fidelity/attr_acc", "fidelity/miou"]
    assert {Path(p).name for p in out["paths"]} >= {"curves.png", "curves_time.png"}
