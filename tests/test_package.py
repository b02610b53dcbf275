"""facediff as a lab installs it: plain `pip install .` into a fresh virtual environment (not
the editable checkout), its dependencies from the package index, its configs shipped inside as
`facediff.conf`, run from a folder that is not the checkout."""

import os
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
TINY_DATA = [
    "data.source.num_faces=48", "data.source.image_size=32", "data.source.mask_size=32",
    "data.source.num_workers=1", "data.resolution=16", "data.batch_size=4",
]  # fmt: skip


def pip(python: Path, *args: str, cwd=None) -> None:
    run = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *args],
        capture_output=True, text=True, timeout=900, cwd=cwd,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]


@pytest.mark.slow
def test_pip_install_dot_in_a_fresh_venv_trains_the_demo_from_another_folder(tmp_path):
    source = tmp_path / "clone"  # the tracked files, as a fresh clone has them
    files = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        target = source / name.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name.decode()).is_file():
            target.write_bytes((ROOT / name.decode()).read_bytes())
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    pip(python, "torch==2.13.0")  # the README's order: torch for the machine first (a CPU build)
    pip(python, ".", "--no-cache-dir", cwd=source)  # then `pip install .`: deps from the index
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
