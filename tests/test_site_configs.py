"""A lab's own configs beside the shipped ones: a site's settings (local/default.yaml, read
last) and experiments of its own, from a folder given by hydra.searchpath or --config-dir."""

import subprocess
import sys

from facediff.config import compose


def test_a_sites_local_settings_are_read_last(tmp_path):
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "default.yaml").write_text(
        "# @package _global_\nlogger:\n  wandb:\n    entity: my-lab\npaths:\n  data_dir: /shared/d\n"
    )
    cfg = compose("train", [f"hydra.searchpath=[file://{tmp_path}]", "experiment=demo"])
    assert cfg.logger.wandb.entity == "my-lab" and cfg.paths.data_dir == "/shared/d"
    assert cfg.task_name == "demo"  # the experiment still applies
    plain = compose("train", [])
    assert "entity" not in plain.logger.wandb and plain.paths.data_dir != "/shared/d"


def test_an_experiment_of_ones_own_from_a_config_dir(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - multi\n  - override /loss: min_snr\ntask_name: mine\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "facediff.cli.train", "--config-dir", str(tmp_path),
         "experiment=mine", "--cfg", "job"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "task_name: mine" in run.stdout and "MinSNRWeighting" in run.stdout
    assert "mask:" in run.stdout  # multi's mask encoder, from the shipped experiment
