"""The notebooks: each runs top to bottom on a tiny model (the tests' own), and the copies in
the repository carry their outputs (pictures included, under a size budget), so that they show
their results where they are read (`python notebooks/build.py --execute`, after `make demo`)."""

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from facediff.cli.train import train

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"
BUDGET = 1_500_000  # bytes per saved notebook


def run(name: str) -> list[dict]:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"], name
    return outputs


def pictures(outputs: list[dict]) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)


def test_quickstart_notebook_executes(make_cfg, monkeypatch):
    cfg = make_cfg("conditioner=attr_mask_concat")
    train(cfg)
    monkeypatch.setenv(
        "FACEDIFF_CKPT", str(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    )
    outputs = run("quickstart")
    assert any("(4, 16, 16, 3)" in str(o.get("text", "")) for o in outputs)
    assert pictures(outputs) == 2


@pytest.mark.slow
def test_training_notebook_trains_and_shows_its_grid(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEDIFF_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FACEDIFF_NOTEBOOK_OUT", str(tmp_path / "run"))
    outputs = run("training")
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert any("val/loss" in str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert pictures(outputs) == 1


@pytest.mark.slow
def test_study_notebook_runs_a_small_study_and_plots_its_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEDIFF_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FACEDIFF_STUDY", str(tmp_path / "study"))
    outputs = run("study")
    assert (tmp_path / "study" / "report" / "results.csv").is_file()
    text = " ".join(str(o.get("text", "")) for o in outputs)
    assert (
        "| conditioner=attr | 2/2 |" in text and "| conditioner=attr_mask_concat | 2/2 |" in text
    )
    assert pictures(outputs) == 1  # the error-bar plot


@pytest.mark.parametrize("name", ["quickstart", "editing", "training", "study"])
def test_saved_notebooks_show_their_results(name):
    path = NOTEBOOKS / f"{name}.ipynb"
    nb = json.loads(path.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert pictures(outputs) >= 1, f"{path}: saved without its pictures (notebooks/build.py)"
    assert not [o for o in outputs if o.get("output_type") == "error"], path
    assert path.stat().st_size < BUDGET, f"{path}: {path.stat().st_size} bytes"
