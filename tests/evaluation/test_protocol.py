"""The evaluators as facediff-train experiments, the fidelity monitor during training, and the
generated-folder format facediff-evaluate scores."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facediff.cli.train import train
from facediff.evaluation.evaluator_cache import evaluators
from facediff.evaluation.generated import CONDITIONS, read_generated, write_generated
from facediff.evaluation.protocol import _groups
from facediff.evaluation.tables import markdown_table
from facediff.lit.evaluators import AttributeClassifier, FaceParser


def logged(cfg) -> list[dict]:
    path = sorted(Path(cfg.paths.output_dir).rglob("metrics.csv"))[-1]  # the newest version
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    ("experiment", "cls", "metric"),
    [
        ("eval_classifier", AttributeClassifier, "val/attr_acc"),
        ("eval_parser", FaceParser, "val/pixel_acc"),
    ],
)
def test_evaluator_experiments_train_through_facediff_train(make_cfg, experiment, cls, metric):
    cfg = make_cfg(
        f"experiment={experiment}", "trainer.max_steps=4", "trainer.val_check_interval=2"
    )
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    module = cls.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    assert isinstance(module, cls)
    rows = [r for r in logged(cfg) if r.get(metric)]
    assert rows and 0 <= float(rows[-1][metric]) <= 1


def test_evaluators_are_trained_once_and_reused(make_cfg, tmp_path):
    from facediff.lit.training import build

    cfg = make_cfg()
    dm, _ = build(cfg)
    ev = tmp_path / "ev"
    parser, classifier = evaluators(dm, ev, parser_steps=2, classifier_steps=2)
    stamp = {p.name: p.stat().st_mtime_ns for p in ev.glob("*.ckpt")}
    assert set(stamp) == {"face_parser.ckpt", "attribute_classifier.ckpt"}
    # trained on every attribute of the prepared data; a model's attributes are picked by name
    assert classifier.head.out_features == 40 == len(classifier.attr_names)
    assert classifier.columns(dm.attr_names) == [
        classifier.attr_names.index(n) for n in dm.attr_names
    ]
    with pytest.raises(ValueError, match="not trained on \\['Wings'\\]"):
        classifier.columns(["Smiling", "Wings"])
    parser2, _ = evaluators(dm, ev, parser_steps=2, classifier_steps=2)
    assert {p.name: p.stat().st_mtime_ns for p in ev.glob("*.ckpt")} == stamp  # not retrained
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(parser(x), parser2(x))
    assert not (ev / "face_parser_run" / "checkpoints").exists()


def test_fidelity_is_logged_during_training(make_cfg, tmp_path):
    options = (
        "conditioner=attr_mask_concat",
        "callbacks.fidelity.every_n_steps=2",
        "callbacks.fidelity.num_conditions=3",
        "callbacks.fidelity.num_steps=2",
        f"evaluation.evaluators_dir={tmp_path / 'ev'}",
        "evaluation.parser_steps=2",
        "evaluation.classifier_steps=2",
    )
    cfg = make_cfg(*options, "trainer.max_steps=4")
    train(cfg)
    rows = [r for r in logged(cfg) if r.get("fidelity/miou")]
    assert [int(r["step"]) for r in rows] == [1, 3]  # logged at global steps 2 and 4
    for r in rows:
        for key in ("attr_acc", "mask_acc", "miou", "miou_shuffled", "attr_acc_shuffled"):
            assert 0 <= float(r[f"fidelity/{key}"]) <= 1
    assert (tmp_path / "ev" / "face_parser.ckpt").is_file()

    # the ceiling: the evaluators on the same items' real images, computed here by hand
    from facediff.data.batch import condition_batch
    from facediff.lit.training import build

    dm, _ = build(cfg)
    parser, classifier = evaluators(dm, tmp_path / "ev", parser_steps=2, classifier_steps=2)
    real = condition_batch(dm, "val", 3)
    with torch.no_grad():
        labels = parser(real["image"]).argmax(1).numpy()
        attrs = classifier(real["image"])[:, classifier.columns(dm.attr_names)].numpy() > 0
    truth = real["mask"].numpy()

    def miou(labels):  # over the classes present in the conditions
        return np.mean(
            [
                ((labels == c) & (truth == c)).sum() / ((labels == c) | (truth == c)).sum()
                for c in np.unique(truth)
            ]  # fmt: skip
        )

    known = real["attrs_known"].numpy()
    correct = (attrs == (real["attrs"].numpy() > 0.5)) & known
    has = known.any(0)  # the mean over attributes of each one's accuracy where it is known
    accuracy = (correct.sum(0)[has] / known.sum(0)[has]).mean()
    for r in rows:
        assert float(r["fidelity/miou_real"]) == pytest.approx(miou(labels), abs=1e-6)
        assert float(r["fidelity/attr_acc_real"]) == pytest.approx(accuracy, abs=1e-6)
    assert "fidelity/miou_decoded" not in rows[0]  # pixel space: no first stage to score
    # the real images at half the resolution (2 x 2 means), bicubic back up: the same reading
    size = real["image"].shape[-1]
    half = F.interpolate(F.avg_pool2d(real["image"], 2), scale_factor=2, mode="bicubic")
    with torch.no_grad():
        half_labels = parser(half.clamp(-1, 1)).argmax(1).numpy()
    for r in rows:
        assert float(r[f"fidelity/miou_real_{size // 2}px"]) == pytest.approx(miou(half_labels))
        assert f"fidelity/attr_acc_real_{size // 4}px" in r
    # the training clock: positive, rising, and carried through the checkpoint
    seconds = [float(r["time/train_s"]) for r in rows]
    assert 0 < seconds[0] < seconds[1]
    again = make_cfg(*options, "trainer.max_steps=6", "ckpt_path=last")
    train(again)
    resumed = [float(r["time/train_s"]) for r in logged(again) if r.get("time/train_s")]
    assert resumed[-1] > seconds[1]


def _folder(tmp_path, n=6, k=3, size=8):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    cond = {
        "index": torch.tensor([5, 5, 5, 9, 9, 9])[:n],
        "sample": torch.arange(k).repeat(n // k),
        "attrs": torch.randint(0, 2, (n, 2), generator=g).float(),
        "attrs_known": torch.ones(n, 2, dtype=torch.bool),
        "mask": torch.randint(0, 19, (n, size, size), generator=g),
    }
    meta = {"data_root": "x", "split": "val", "resolution": size, "attr_names": ["a", "b"]}
    return write_generated(tmp_path / "gen", images, cond, meta), images, cond


def test_generated_folder_round_trip_and_groups(tmp_path):
    d, images, cond = _folder(tmp_path)
    got, got_cond, meta = read_generated(d)
    assert torch.equal(got, images) and meta["attr_names"] == ["a", "b"]
    for key in cond:
        assert torch.equal(got_cond[key], cond[key].to(got_cond[key].dtype)), key
    groups = _groups(got, got_cond)
    assert groups.shape == (2, 3, 3, 8, 8) and torch.equal(groups[1, 2], images[5])


def test_generated_folder_bad_inputs(tmp_path):
    d, _, _ = _folder(tmp_path)
    next((d / "samples").glob("*.png")).unlink()
    with pytest.raises(ValueError, match="5 PNG files, but conditions.npz has 6 rows"):
        read_generated(d)
    (d / CONDITIONS).unlink()
    with pytest.raises(FileNotFoundError, match="conditions.npz is missing"):
        read_generated(d)
    d2, _, _ = _folder(tmp_path / "b")
    z = dict(np.load(d2 / CONDITIONS))
    del z["attrs_known"]
    np.savez(d2 / CONDITIONS, **z)
    with pytest.raises(ValueError, match="no 'attrs_known' array"):
        read_generated(d2)
    meta = json.loads((d2 / "generated.json").read_text())
    del meta["resolution"]
    (d2 / "generated.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="generated.json: no 'resolution'"):
        read_generated(d2)


def test_table_has_the_paper_columns_only_where_computed():
    rows = {
        "real images (ground truth)": {"attr_acc": 0.9, "mask_acc": 0.8, "miou": 0.5},
        "samples vs own conditions": {
            "fid_domain": 12.345,
            "kid_domain": 0.0123,
            "attr_acc": 0.7,
            "diversity": 0.25,
        },
    }
    table = markdown_table(rows).splitlines()
    assert table[0] == "| | FID* | KID* x100 | attribute acc. | mask acc. | mIoU | diversity |"
    assert table[2] == "| real images (ground truth) | - | - | 90.0 | 80.0 | 50.0 | - |"
    assert table[3] == "| samples vs own conditions | 12.35 | 1.23 | 70.0 | - | - | 0.2500 |"


def tiny_protocol(tmp_path) -> list[str]:
    """3 conditions, 2-step evaluators cached under tmp_path/ev, KID on subsets of 2."""
    return [
        "evaluation.num_conditions=3",
        "evaluation.parser_steps=2",
        "evaluation.classifier_steps=2",
        "evaluation.kid_subset_size=2",
        f"evaluation.evaluators_dir={tmp_path / 'ev'}",
    ]


def test_evaluation_variants_evaluate_one_model_several_ways(make_cfg, tmp_path):
    """evaluation.variants: one training, an evaluation per variant in evaluation/<name>/,
    each with its options over the protocol; the same noise, so eta 0 and eta 1 differ only by
    eta; a sweeper reads report/<variant>/<column>."""
    from facediff.cli.train import sweep_value

    cfg = make_cfg(
        "conditioner=attr",
        "evaluate_after=true",
        # a variant's solver is its own: d2 (no solver) samples with the checkpoint's DDIM
        "evaluation.variants={d:{eta:0.0},s:{eta:1.0},dpm:{sampler:dpmpp_2m},d2:{eta:0.0}}",
        "evaluation.diversity_conditions=0",
        "evaluation.num_steps=3",
        *tiny_protocol(tmp_path),
    )
    metrics = train(cfg)
    out = Path(cfg.paths.output_dir) / "evaluation"
    names = ("d", "s", "dpm", "d2")
    assert not (out / "metrics.json").exists() and tuple(metrics["report"]) == names
    reports = {n: json.loads((out / n / "metrics.json").read_text()) for n in names}
    assert reports["dpm"]["generated"]["sampler"] == "Sampler(DPMSolverMultistepScheduler)"
    assert reports["d2"]["generated"]["sampler"] == "Sampler(DDIMScheduler)"
    for name, eta in (("d", 0.0), ("s", 1.0)):
        r = reports[name]
        assert r["variant"] == {"name": name, "options": {"eta": eta}}
        assert r["protocol"]["eta"] == r["generated"]["eta"] == eta
        assert "variants" not in r["protocol"] and r["rows"] == metrics["report"][name]
    images = {n: read_generated(out / n / "generated")[0] for n in ("d", "s", "d2")}
    assert torch.equal(images["d"], images["d2"])  # the protocol's seeds: repeatable
    assert not torch.equal(images["d"], images["s"])  # eta changes the samples
    own = metrics["report"]["s"]["samples vs own conditions"]
    assert sweep_value(metrics, "report/s/attr_acc") == own["attr_acc"]
    with pytest.raises(ValueError, match=r"variants \['d', 's', 'dpm', 'd2'\]; name one"):
        sweep_value(metrics, "report/attr_acc")


def test_a_bad_evaluation_variant_fails_before_training(make_cfg, tmp_path):
    cfg = make_cfg("evaluate_after=true", "evaluation.variants={s:{sampler:dpm3}}")
    with pytest.raises(ValueError, match=r"evaluation\.variants\.s: evaluation\.sampler='dpm3'"):
        train(cfg)
    assert not list(Path(cfg.paths.output_dir).rglob("*.ckpt"))


def test_evaluate_after_training_writes_the_report(make_cfg, tmp_path, capsys):
    cfg = make_cfg(
        "conditioner=attr_mask_concat",
        "evaluate_after=true",
        "evaluation.diversity_conditions=2",
        "evaluation.samples_per_condition=2",
        "evaluation.num_steps=2",
        *tiny_protocol(tmp_path),
    )
    metrics = train(cfg)
    out = Path(cfg.paths.output_dir) / "evaluation"
    report = json.loads((out / "metrics.json").read_text())
    assert report["rows"] == metrics["report"] and report["protocol"]["num_conditions"] == 3
    assert report["extractors"]["fid"] == "not computed (evaluation.inception=null)"
    assert "fid" not in report["rows"]["samples vs own conditions"]
    assert "| samples vs shuffled conditions |" in capsys.readouterr().out
    assert len(list((out / "generated" / "samples").glob("*.png"))) == 3 + 2
    assert report["precision"]["training"] == cfg.trainer.precision != "auto"
    assert report["precision"]["reason"] == cfg.precision_reason


def test_soft_dice_loss_against_a_hand_computation():
    from facediff.lit.evaluators import soft_dice_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 3, generator=g)
    target = torch.randint(0, 3, (2, 3, 3), generator=g)  # class 3 absent: not averaged
    prob = logits.softmax(1).numpy()
    t = target.numpy()
    dices = []
    for c in np.unique(t):
        inter = prob[:, c][t == c].sum()
        dices.append((2 * inter + 1) / (prob[:, c].sum() + (t == c).sum() + 1))
    assert float(soft_dice_loss(logits, target)) == pytest.approx(1 - np.mean(dices), abs=1e-6)
    perfect = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float() * 100
    assert float(soft_dice_loss(perfect, target)) == pytest.approx(0, abs=1e-6)
