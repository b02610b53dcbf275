"""Faults during training: interruption, non-finite steps, a kill during a checkpoint save."""

from pathlib import Path

import pytest
import torch

from facediff.cli.train import train
from facediff.lit.callbacks import AtomicCheckpointIO
from facediff.lit.diffusion import NonFiniteTrainingError
from tests.lit.helpers import all_finite

FAST = ["callbacks.sample_grid.every_n_steps=0", "trainer.val_check_interval=2"]


def ckpt(cfg, name="last.ckpt"):
    return torch.load(
        Path(cfg.paths.output_dir) / "checkpoints" / name, map_location="cpu", weights_only=False
    )


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_signal_writes_checkpoint_and_run_resumes(make_cfg, tmp_path, signal_name):
    cfg = make_cfg(
        *FAST,
        "trainer.max_steps=8",
        "+callbacks.signal._target_=tests.lit.helpers.SendSignalAt",
        "+callbacks.signal.step=3",
        f"+callbacks.signal.signal_name={signal_name}",
    )
    train(cfg)
    state = ckpt(cfg)
    # written at the first step boundary after the signal (sent at the end of step 3)
    assert state["global_step"] in (3, 4)
    resumed = make_cfg(
        *FAST,
        "trainer.max_steps=8",
        f"paths.output_dir={tmp_path / 'resumed'}",
        f"ckpt_path={Path(cfg.paths.output_dir) / 'checkpoints' / 'last.ckpt'}",
    )
    train(resumed)
    assert ckpt(resumed)["global_step"] == 8


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_non_finite_steps_are_skipped_and_never_reach_ema(make_cfg, kind):
    cfg = make_cfg(
        *FAST,
        "trainer.max_steps=6",
        "+callbacks.poison._target_=tests.lit.helpers.PoisonSteps",
        "+callbacks.poison.at=[1,2]",
        f"+callbacks.poison.kind={kind}",
    )
    train(cfg)
    state = ckpt(cfg)
    assert state["bad_steps"] == (0, 2)  # none in a row at the end, two in all
    assert all_finite(state["state_dict"])
    assert all(torch.isfinite(p).all() for p in state["ema"]["shadow_params"])
    assert state["ema"]["optimization_step"] == 4  # the EMA saw the good steps only


def test_too_many_bad_steps_stop_with_clear_error_and_last_good_checkpoint(make_cfg):
    cfg = make_cfg(
        *FAST,
        "trainer.max_steps=10",
        "model.max_bad_steps=3",
        "+callbacks.poison._target_=tests.lit.helpers.PoisonSteps",
        "+callbacks.poison.at=[4,5,6,7,8,9]",
    )
    with pytest.raises(NonFiniteTrainingError, match="3 consecutive steps.*max_bad_steps=3"):
        train(cfg)
    state = ckpt(cfg)  # the last checkpoint: finite, from before the run stopped
    assert state["global_step"] >= 4 and all_finite(state["state_dict"])
    assert all(torch.isfinite(p).all() for p in state["ema"]["shadow_params"])


def test_kill_during_save_leaves_previous_checkpoint_whole(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the process is killed mid-write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    state = torch.load(path, weights_only=False)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
