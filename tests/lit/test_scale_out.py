"""Scale-out options a user sets on one machine: the SLURM launchers follow the trainer,
`launcher=`/`+launcher=` both compose, ckpt_path=auto resumes a run in its own folder, a
resume keeps the checkpoint's precision, device=auto."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_module

from facediff import checkpoint, precision
from facediff.cli.train import train
from facediff.config import group_overrides, register_resolvers
from facediff.lit import callbacks
from facediff.lit.callbacks import Interrupted
from tests.reliability.test_faults import RESUME, assert_same_training_state


def launcher(*overrides):
    register_resolvers()
    with initialize_config_module("facediff.conf", version_base="1.3"):
        cfg = hydra_compose("train", overrides=list(overrides), return_hydra_config=True)
    return cfg, cfg.hydra.launcher


def test_slurm_ddp_takes_its_shape_from_the_trainer():
    cfg, l = launcher("launcher=slurm_ddp", "trainer.num_nodes=2", "trainer.devices=4")
    assert (l.nodes, l.tasks_per_node, l.gpus_per_node) == (2, 4, 4)
    assert (l.cpus_per_task, l.mem_gb) == (8, 128)  # 8 CPUs a GPU task, 32 GB a GPU
    assert cfg.ckpt_path == "auto" and cfg.trainer.strategy == "ddp"
    _, l = launcher("launcher=slurm_ddp", "trainer.accelerator=cpu", "trainer.num_nodes=2")
    assert (l.nodes, l.tasks_per_node, l.gpus_per_node, l.cpus_per_task) == (2, 1, None, 1)
    _, l = launcher("launcher=slurm_ddp", "trainer.accelerator=cpu", "hydra.launcher.mem_gb=3")
    assert l.mem_gb == 3  # the resources stay overridable
    _, l = launcher("launcher=slurm", "trainer.accelerator=cpu")
    assert l.gpus_per_node is None  # a CPU job asks for no GPU


def test_slurm_ddp_refuses_all_devices_naming_the_option():
    _, l = launcher("launcher=slurm_ddp", "trainer.devices=-1")
    with pytest.raises(Exception, match=r"trainer.devices=-1: a SLURM launcher starts one task"):
        _ = l.tasks_per_node


def test_groups_compose_with_and_without_plus():
    assert group_overrides(["+launcher=joblib", "+study=x", "++trainer.x=1", "+callbacks.a=1"]) == [
        "launcher=joblib", "study=x", "++trainer.x=1", "+callbacks.a=1"
    ]  # fmt: skip
    for spelling in ("launcher=joblib", "+launcher=joblib"):
        from facediff.config import compose

        assert compose("train", [spelling]).threads == 1


def test_ckpt_path_auto_resumes_the_run_in_its_own_folder(make_cfg, tmp_path, caplog):
    """A run stopped by SIGTERM and started again with the same command (ckpt_path=auto, as a
    requeued SLURM job or a sweep run again into its folder) ends where the run left alone
    does; in a new folder ckpt_path=auto starts at step 0, saying so."""
    straight = make_cfg(*RESUME, "trainer.max_steps=6", f"paths.output_dir={tmp_path / 's'}")
    with caplog.at_level("INFO", logger="facediff.train"):
        train(straight)
    assert "ckpt_path=auto" not in caplog.text
    stop = ["+callbacks.stop._target_=tests.lit.helpers.SendSignalAt", "+callbacks.stop.step=3"]
    out = f"paths.output_dir={tmp_path / 'auto'}"
    with caplog.at_level("INFO", logger="facediff.train"):
        with pytest.raises(Interrupted):
            train(make_cfg(*RESUME, "trainer.max_steps=6", out, "ckpt_path=auto", *stop))
    assert "ckpt_path=auto: no" in caplog.text and "starting from step 0" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="facediff.train"):
        train(make_cfg(*RESUME, "trainer.max_steps=6", out, "ckpt_path=auto"))
    assert "ckpt_path=auto: resuming from" in caplog.text
    last = Path(tmp_path / "auto" / "checkpoints" / "last.ckpt")
    assert_same_training_state(
        checkpoint.load(Path(tmp_path / "s" / "checkpoints" / "last.ckpt")), checkpoint.load(last)
    )
    with pytest.raises(FileNotFoundError, match="ckpt_path=last: this run has no"):
        train(make_cfg(*RESUME, f"paths.output_dir={tmp_path / 'new'}", "ckpt_path=last"))


def test_a_resume_keeps_the_checkpoints_precision(make_cfg, tmp_path, monkeypatch, caplog):
    """A 32-true checkpoint resumed with precision=auto on a bf16 machine stays 32-true and
    says so; a precision the user sets wins."""
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: False)
    first = make_cfg(*RESUME, "trainer.max_steps=2", f"paths.output_dir={tmp_path / 'a'}")
    train(first)
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: True)
    resumed = make_cfg(*RESUME, "trainer.max_steps=4", f"ckpt_path={ckpt}",
                       f"paths.output_dir={tmp_path / 'b'}")  # fmt: skip
    with caplog.at_level("INFO", logger="facediff.train"):
        train(resumed)
    assert "precision 32-true: the precision of the checkpoint resumed" in caplog.text
    saved = checkpoint.load(tmp_path / "b" / "checkpoints" / "last.ckpt")["facediff"]["config"]
    assert saved["trainer"]["precision"] == "32-true"
    chosen = make_cfg(*RESUME, "trainer.max_steps=4", f"ckpt_path={ckpt}",
                      "trainer.precision=bf16-mixed", f"paths.output_dir={tmp_path / 'c'}")  # fmt: skip
    train(chosen)
    saved = checkpoint.load(tmp_path / "c" / "checkpoints" / "last.ckpt")["facediff"]["config"]
    assert saved["trainer"]["precision"] == "bf16-mixed"


def test_device_auto(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert precision.resolve_device("auto") == torch.device("cuda")
    assert precision.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device='gpu0': expected auto, cpu, cuda or cuda:N"):
        precision.resolve_device("gpu0")


def test_a_resume_reads_its_checkpoint_once(make_cfg, tmp_path, monkeypatch):
    """The resume check, the W&B run id, the precision and Lightning's restore share one read
    (a multi-GB checkpoint on a shared file system, times the ranks)."""
    first = make_cfg(*RESUME, "trainer.max_steps=2", f"paths.output_dir={tmp_path / 'a'}")
    train(first)
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    reads, load = [], checkpoint.load

    def counting(path, *args, **kwargs):
        reads.append(Path(path))
        return load(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "load", counting)
    monkeypatch.setattr(callbacks, "load", counting)  # Lightning's read (AtomicCheckpointIO)
    try:
        train(make_cfg(*RESUME, "trainer.max_steps=4", f"ckpt_path={ckpt}", "logger=wandb_csv",
                       f"paths.output_dir={tmp_path / 'b'}"))  # fmt: skip
    finally:
        __import__("wandb").teardown()  # W&B's process-wide settings go with this test
    assert reads.count(ckpt) == 1
