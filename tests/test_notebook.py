"""notebooks/quickstart.ipynb runs top to bottom on a tiny checkpoint."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from facediff.cli.train import train

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(make_cfg, monkeypatch):
    cfg = make_cfg("conditioner=attr_mask_concat")
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    monkeypatch.setenv("FACEDIFF_CKPT", str(ckpt))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("(4, 16, 16, 3)" in str(o.get("text", "")) for o in outputs)
