"""facediff as a lab installs it: a wheel (not the editable checkout), its configs shipped inside
as `facediff.conf`, run from a folder that is not the checkout."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_the_wheel_trains_the_demo_from_another_folder(tmp_path, data_dir):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(ROOT)],
        check=True, timeout=300,
    )  # fmt: skip
    (wheel,) = wheels.glob("facediff-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
         str(wheel)],
        check=True, timeout=300,
    )  # fmt: skip
    assert (site / "facediff" / "conf" / "train.yaml").is_file()  # the configs travel inside
    assert (site / "facediff" / "py.typed").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # the wheel first on the path (its dependencies from this environment), the checkout absent
    env = dict(os.environ, PYTHONPATH=str(site), WANDB_MODE="offline", OMP_NUM_THREADS="1")
    where = subprocess.run(
        [sys.executable, "-c", "import facediff; print(facediff.__file__)"],
        capture_output=True, text=True, env=env, cwd=elsewhere, check=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()).parent == site / "facediff"
    overrides = [f"paths.data_dir={data_dir}", *tiny(["experiment=demo"])]
    run = subprocess.run(
        [sys.executable, "-m", "facediff.cli.train", "experiment=demo",
         "trainer.fast_dev_run=true", "logger=csv", *overrides],
        capture_output=True, text=True, env=env, cwd=elsewhere, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert list((elsewhere / "outputs" / "demo").iterdir())  # its run folder, here
