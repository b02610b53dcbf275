"""Which code a run used: the commit of the checkout and a digest of its uncommitted changes,
recorded in checkpoints and metrics.json; a checkout changed under a running process is said."""

from __future__ import annotations

import subprocess

import pytest

import facediff
from facediff import provenance


def git(root, *args):
    subprocess.run(
        ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A git checkout shaped like facediff's (pyproject.toml, facediff/, conf/), one commit."""
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'facediff'\n")
    (tmp_path / "facediff").mkdir()
    (tmp_path / "facediff" / "losses.py").write_text("GAMMA = 0.5\n")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "p2.yaml").write_text("gamma: 0.5\n")
    (tmp_path / "README.md").write_text("hello\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "first")
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    return tmp_path


def test_the_commit_and_a_digest_of_what_changed_since(checkout):
    head = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short=12", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert provenance.code_version() == head
    (checkout / "README.md").write_text("changed\n")  # not code: still the commit
    assert provenance.code_version() == head

    (checkout / "conf" / "p2.yaml").write_text("gamma: 1.0\n")
    one = provenance.code_version()
    assert one.startswith(head + "+dirty.")
    (checkout / "conf" / "p2.yaml").write_text("gamma: 2.0\n")
    two = provenance.code_version()
    assert two.startswith(head + "+dirty.") and two != one  # another change, another digest
    (checkout / "conf" / "p2.yaml").write_text("gamma: 1.0\n")
    assert provenance.code_version() == one  # the same change, the same digest

    (checkout / "conf" / "p2.yaml").write_text("gamma: 0.5\n")
    assert provenance.code_version() == head
    (checkout / "facediff" / "new.py").write_text("X = 1\n")  # untracked code counts
    assert provenance.code_version().startswith(head + "+dirty.")


def test_an_installed_copy_is_named_by_its_version(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "ROOT", tmp_path)  # no .git: a wheel in site-packages
    assert provenance.code_version() == f"facediff {facediff.__version__}"


def test_a_checkout_changed_under_a_running_process_is_said(make_cfg, monkeypatch, caplog):
    """A sweep's worker imported facediff before the checkout changed, then read new configs:
    the job warns, and its checkpoint and metrics record both versions."""
    from facediff import checkpoint
    from facediff.cli.train import train

    monkeypatch.setattr(provenance, "LOADED", "0123456789ab")
    cfg = make_cfg("conditioner=attr_mask_concat", "trainer.max_steps=2")
    with caplog.at_level("WARNING", logger="facediff.train"):
        train(cfg)
    assert "the facediff checkout changed under this process" in caplog.text
    ckpt = checkpoint.load(f"{cfg.paths.output_dir}/checkpoints/last.ckpt")
    assert ckpt["facediff"]["code_loaded"] == "0123456789ab"
    assert ckpt["facediff"]["code"] == provenance.code_version() != "0123456789ab"
