"""facediff as a lab installs it: the wheel (not the editable checkout) into a fresh virtual
environment, its dependencies from the package index, its configs shipped inside as
`facediff.conf`, run from a folder that is not the checkout."""

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
TINY_DATA = [
    "data.source.num_faces=48", "data.source.image_size=32", "data.source.mask_size=32",
    "data.source.num_workers=1", "data.resolution=16", "data.batch_size=4",
]  # fmt: skip


def pip(python: Path, *args: str) -> None:
    run = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *args],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]


@pytest.mark.slow
def test_the_wheel_in_a_fresh_venv_trains_the_demo_from_another_folder(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(ROOT)],
        check=True, timeout=300,
    )  # fmt: skip
    (wheel,) = wheels.glob("facediff-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    pip(python, "torch==2.13.0")  # the README's order: torch for the machine first (a CPU build)
    pip(python, str(wheel))  # then facediff, its dependencies from the index
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    where = subprocess.run(
        [str(python), "-c", "import facediff, facediff.conf; print(facediff.__file__)"],
        capture_output=True, text=True, env=env, cwd=elsewhere, check=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(env_dir)  # the wheel, not the checkout
    assert (Path(where.stdout.strip()).parent / "py.typed").is_file()
    run = subprocess.run(
        [str(env_dir / "bin" / "facediff-train"), "experiment=demo", "trainer.fast_dev_run=true",
         f"paths.data_dir={elsewhere / 'data'}", *TINY_DATA],
        capture_output=True, text=True, env=env, cwd=elsewhere, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert list((elsewhere / "outputs" / "demo").iterdir())  # its run folder, here
