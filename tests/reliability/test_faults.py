"""Faults during training: interruption, non-finite steps, a kill during a checkpoint save."""

import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch

from facediff import checkpoint
from facediff.cli.train import train
from facediff.lit.callbacks import AtomicCheckpointIO, Interrupted
from facediff.lit.diffusion import NonFiniteTrainingError
from tests.lit.helpers import all_finite

FAST = ["callbacks.sample_grid.every_n_steps=0", "trainer.val_check_interval=2"]


def ckpt(cfg, name="last.ckpt"):
    return checkpoint.load(Path(cfg.paths.output_dir) / "checkpoints" / name)


RESUME = [  # no validation among the steps: every stop below falls between validations
    "conditioner=attr_mask_concat",
    "callbacks.sample_grid.every_n_steps=0",
    "trainer.val_check_interval=100",
    "callbacks.last_checkpoint.every_n_steps=2",
]
STOPS = {
    "max_steps": ["trainer.max_steps=3"],
    "SIGTERM": [
        "+callbacks.stop._target_=tests.lit.helpers.SendSignalAt",
        "+callbacks.stop.step=3",
    ],
    "SIGINT": [
        "+callbacks.stop._target_=tests.lit.helpers.SendSignalAt",
        "+callbacks.stop.step=3",
        "+callbacks.stop.signal_name=SIGINT",
    ],
    "exception": ["+callbacks.stop._target_=tests.lit.helpers.RaiseAt", "+callbacks.stop.step=5"],
    # trainer.max_time: last.ckpt holds the step it stopped at (3, not 2)
    "max_time": ["+callbacks.stop._target_=tests.lit.helpers.TimeUpAt", "+callbacks.stop.step=3"],
}


def assert_same_training_state(a: dict, b: dict) -> None:
    """Weights, EMA, optimizer moments, LR schedule, module RNG and data position equal."""
    assert a["global_step"] == b["global_step"]
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for x, y in zip(a["ema"]["shadow_params"], b["ema"]["shadow_params"], strict=True):
        assert torch.equal(x, y)
    assert a["ema"]["optimization_step"] == b["ema"]["optimization_step"]
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for k in sa:
        for m in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(sa[k][m]), torch.as_tensor(sb[k][m])), (k, m)
    assert a["lr_schedulers"] == b["lr_schedulers"]
    assert torch.equal(a["generator"], b["generator"])
    assert a["FaceDataModule"] == b["FaceDataModule"]


@pytest.mark.parametrize("stop", list(STOPS))
def test_resume_from_any_stop_continues_exactly(make_cfg, tmp_path, stop):
    """8 steps straight == stopped between validations (max_steps=3, SIGTERM or SIGINT after
    step 3, trainer.max_time up after step 3, an exception in step 6 with the last checkpoint at
    4), then resumed to 8."""
    straight = make_cfg(*RESUME, "trainer.max_steps=8", f"paths.output_dir={tmp_path / 's'}")
    train(straight)
    first = make_cfg(*RESUME, "trainer.max_steps=8", *STOPS[stop])
    if stop in ("max_steps", "max_time"):
        train(first)
    elif stop == "exception":
        with pytest.raises(RuntimeError, match="injected failure at step 5"):
            train(first)
    else:
        with pytest.raises(Interrupted, match=f"{stop} received: stopped at step") as e:
            train(first)
        assert e.value.exit_code == 128 + getattr(signal, stop)
    stopped = ckpt(first)
    # SIGINT is seen at the next step boundary (the sender runs after LastCheckpoint)
    assert stopped["global_step"] == {"exception": 4, "SIGINT": 4}.get(stop, 3)
    assert not list((Path(first.paths.output_dir) / "checkpoints").glob("last*.ckpt.tmp*"))
    assert [p.name for p in (Path(first.paths.output_dir) / "checkpoints").glob("last*")] == [
        "last.ckpt"
    ]  # one last checkpoint per stop
    resumed = make_cfg(
        *RESUME,
        "trainer.max_steps=8",
        f"paths.output_dir={tmp_path / 'r'}",
        f"ckpt_path={Path(first.paths.output_dir) / 'checkpoints' / 'last.ckpt'}",
    )
    train(resumed)
    assert_same_training_state(ckpt(straight), ckpt(resumed))


class SecondSigintMidStep(L.Callback):
    """A user's second Ctrl-C: SIGINT after step `step`'s end, again inside the next step
    (after its backward, before its optimizer step)."""

    def __init__(self, step: int):
        self.step, self.sent = step, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.sent:  # the next step, halfway
            os.kill(os.getpid(), signal.SIGINT)


def test_a_second_sigint_never_leaves_a_half_step_checkpoint(make_cfg):
    """The first SIGINT asks for a stop at the next step boundary; a second one inside that
    step stops at once and saves nothing: last.ckpt stays the last whole one (step 2, every
    tensor of one step), never a step whose optimizer moved and whose schedule did not."""
    cfg = make_cfg(
        *RESUME,
        "trainer.max_steps=8",
        "+callbacks.stop._target_=tests.reliability.test_faults.SecondSigintMidStep",
        "+callbacks.stop.step=3",
    )
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal
    try:
        with pytest.raises((SystemExit, KeyboardInterrupt, Interrupted)):
            train(cfg)
    finally:
        signal.signal(signal.SIGINT, previous)
    state = ckpt(cfg)
    step = state["global_step"]
    assert step == 2  # the periodic save before the two signals; nothing after
    adam = state["optimizer_states"][0]["state"]
    assert all(int(torch.as_tensor(s["step"])) == step for s in adam.values())
    assert state["lr_schedulers"][0]["last_epoch"] == step
    assert state["ema"]["optimization_step"] == step


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
    state = checkpoint.load(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))


def test_resume_on_changed_data_warns_and_records_it(make_cfg, tmp_path, caplog):
    cfg = make_cfg(*RESUME, "trainer.max_steps=2")
    train(cfg)
    state = ckpt(cfg)
    state["facediff"]["data"]["content_hash"] = "f" * 64  # as if prepared again, differently
    torch.save(state, tmp_path / "old.ckpt")
    resumed = make_cfg(
        *RESUME,
        "trainer.max_steps=4",
        f"paths.output_dir={tmp_path / 'r'}",
        f"ckpt_path={tmp_path / 'old.ckpt'}",
    )
    with caplog.at_level("WARNING", logger="facediff.train"):
        train(resumed)
    assert "resuming" in caplog.text and "on other data" in caplog.text
    assert ckpt(resumed)["facediff"]["data"]["resumed_on_changed_data"] == {
        "content_hash": "f" * 64
    }


@pytest.mark.parametrize(("signal_name", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_stops_the_command_with_a_non_zero_exit(data_dir, tmp_path, signal_name, code):
    """facediff-train as a user runs it: the signal writes last.ckpt, then the job ends with
    128 + the signal number (no evaluation after it, nothing that looks like success)."""
    import os
    import subprocess
    import sys

    from tests.conftest import TINY

    overrides = [o for o in TINY if not o.startswith("~")] + ["~callbacks.progress_bar"]
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "facediff.cli.train", f"paths.data_dir={data_dir}",
        f"hydra.run.dir={out}", *overrides, "trainer.max_steps=50", "evaluate_after=true",
        "+callbacks.stop._target_=tests.lit.helpers.SendSignalAt", "+callbacks.stop.step=2",
        f"+callbacks.stop.signal_name={signal_name}",
    ]  # fmt: skip
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == code, run.stderr[-2000:]
    assert f"{signal_name} received: stopped at step" in run.stdout + run.stderr
    assert checkpoint.load(out / "checkpoints" / "last.ckpt")["global_step"] in (2, 3)
    assert not (out / "evaluation").exists()
