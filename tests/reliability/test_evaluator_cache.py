"""The evaluator cache cannot lie: only completed runs are cached, with what they were trained
on checked when loaded; an interrupted run leaves no entry and is resumed next time."""

from __future__ import annotations

import pytest
import torch

import facediff.config
from facediff import checkpoint
from facediff.evaluation.evaluator_cache import evaluators
from facediff.lit.callbacks import Interrupted
from facediff.lit.training import build


@pytest.fixture
def dm(make_cfg):
    return build(make_cfg())[0]


def test_an_interrupted_evaluator_run_is_not_cached_and_resumes(dm, tmp_path, monkeypatch):
    compose = facediff.config.compose
    signal_at_step_1 = [
        "+callbacks.stop._target_=tests.lit.helpers.SendSignalAt",
        "+callbacks.stop.step=1",
    ]
    monkeypatch.setattr(
        facediff.config, "compose", lambda name, o: compose(name, list(o) + signal_at_step_1)
    )
    ev = tmp_path / "ev"
    with pytest.raises(Interrupted, match="SIGTERM received: stopped at step 1"):
        evaluators(dm, ev, parser_steps=3, classifier_steps=3)
    assert not (ev / "face_parser.ckpt").exists()  # nothing cached
    run_last = ev / "face_parser_run" / "checkpoints" / "last.ckpt"
    assert checkpoint.load(run_last)["global_step"] == 1  # what can be resumed was saved
    monkeypatch.setattr(facediff.config, "compose", compose)
    parser, classifier = evaluators(dm, ev, parser_steps=3, classifier_steps=3)
    cached = checkpoint.load(ev / "face_parser.ckpt")
    assert cached["global_step"] == 3  # resumed from step 1 and completed
    assert cached["facediff"]["data"]["content_hash"] == dm.data.meta["content_hash"]
    assert not run_last.exists()


def test_a_cached_evaluator_is_checked_against_the_data_and_the_protocol(dm, tmp_path):
    ev = tmp_path / "ev"
    evaluators(dm, ev, parser_steps=2, classifier_steps=2)
    with pytest.raises(
        ValueError,
        match=r"face_parser\.ckpt: trained on something else \(steps: cached 2, needed 5\)",
    ):
        evaluators(dm, ev, parser_steps=5, classifier_steps=2)
    state = checkpoint.load(ev / "attribute_classifier.ckpt")
    state["facediff"]["data"]["content_hash"] = "0" * 64
    torch.save(state, ev / "attribute_classifier.ckpt")
    with pytest.raises(
        ValueError,
        match=r"attribute_classifier\.ckpt: trained on something else \(content_hash: cached '0000",
    ):
        evaluators(dm, ev, parser_steps=2, classifier_steps=2)
    state["facediff"]["data"]["content_hash"] = dm.data.meta["content_hash"]
    state["global_step"] = 1  # a run that stopped early, copied there by hand
    torch.save(state, ev / "attribute_classifier.ckpt")
    with pytest.raises(
        ValueError, match=r"a run stopped at step 1 of 2, not a completed evaluator"
    ):
        evaluators(dm, ev, parser_steps=2, classifier_steps=2)


def test_the_parsers_recipe_is_part_of_what_is_checked(dm, tmp_path):
    """A parser trained by eval_parser is not served where eval_parser64 is asked for (both
    named), eval_parser64 trains with the Dice loss, and a recipe that is not a parser's is
    refused before any training."""
    ev = tmp_path / "ev"
    evaluators(dm, ev, parser_steps=2, classifier_steps=2)
    with pytest.raises(
        ValueError,
        match=r"face_parser\.ckpt: trained on something else \(experiment: cached "
        r"'eval_parser', needed 'eval_parser64'\)",
    ):
        evaluators(dm, ev, 2, 2, parser_experiment="eval_parser64")
    other = tmp_path / "ev64"
    parser, _ = evaluators(dm, other, 2, 2, parser_experiment="eval_parser64")
    assert parser.hparams.dice_weight == 1.0 and parser.hparams.sr_ratios == (4, 2, 1, 1)
    with pytest.raises(ValueError, match="experiment=eval_classifier: not a FaceParser recipe"):
        evaluators(dm, tmp_path / "ev3", 2, 2, parser_experiment="eval_classifier")


def test_fast_dev_run_trains_no_evaluator_and_runs_no_evaluation(make_cfg, tmp_path):
    from facediff.cli.train import train

    ev = tmp_path / "ev"
    cfg = make_cfg(
        "experiment=demo",
        "trainer.fast_dev_run=true",
        "callbacks.fidelity.every_n_steps=2",
        f"evaluation.evaluators_dir={ev}",
        "logger=csv",
    )
    assert cfg.evaluate_after
    metrics = train(cfg)
    assert "report" not in metrics and not ev.exists()
