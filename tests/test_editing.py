"""Editing: part swaps, same-noise attribute edits (in a region too), interpolation; API, CLI
and the notebook."""

from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from nbclient import NotebookClient

from facediff.api import FaceGenerator
from facediff.cli.train import train
from facediff.data.labels import MASK_CLASSES
from facediff.editing import swap_parts

C = {n: i for i, n in enumerate(MASK_CLASSES)}


def test_swap_parts_by_hand():
    a = torch.full((6, 6), C["skin"])
    a[0, :] = C["hair"]
    a[2, 1] = C["l_eye"]
    b = torch.full((6, 6), C["background"])
    b[:2, :3] = C["hair"]
    b[3, 4] = C["l_eye"]
    out = swap_parts(a, b, ["hair"])
    assert (out[:2, :3] == C["hair"]).all()  # B's hair
    assert (out[0, 3:] == C["background"]).all()  # A's hair outside B's: background
    assert out[2, 1] == C["l_eye"] and (out[1:, 3:] == a[1:, 3:]).all()  # the rest is A's
    out = swap_parts(a, b, ["eyes"])
    assert out[2, 1] == C["skin"] and out[3, 4] == C["l_eye"]  # a face part leaves skin
    with pytest.raises(ValueError, match="parts: unknown part 'beard'"):
        swap_parts(a, b, ["beard"])


@pytest.fixture
def generator(make_cfg):
    cfg = make_cfg("conditioner=attr_mask_concat", "trainer.max_steps=3")
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    return FaceGenerator.from_checkpoint(ckpt), ckpt


def masks(res=16):
    a = torch.full((res, res), C["skin"])
    a[:4] = C["hair"]
    a[8, 5:7] = C["mouth"]
    b = a.clone()
    b[:8, :4] = C["hair"]
    return a, b


def close(x, y):  # uint8 images from batches of other sizes: equal up to rounding
    return np.abs(x.astype(int) - y.astype(int)).max() <= 2


@pytest.mark.slow
def test_edits_use_the_same_noise(generator):
    gen, _ = generator
    a, b = masks()
    attrs = {"Smiling": 1}
    swap = gen.swap(a, b, ["hair"], attributes=attrs, num_steps=3)
    alone = gen.sample(attributes=attrs, mask=a, num_samples=1, num_steps=3)[0]
    assert close(swap["original"], alone) and not close(swap["swapped"], alone)
    assert (swap["mask"][:8, :4] == C["hair"]).all()

    out = gen.toggle(["Smiling", "Male"], attributes=attrs, mask=a, num_steps=3)
    assert out["images"].shape == (2, 2, 16, 16, 3) and out["attributes"] == ["Smiling", "Male"]
    smiling_on = gen.sample(attributes={"Smiling": 1}, mask=a, num_samples=1, num_steps=3)[0]
    assert close(out["images"][0, 1], smiling_on)

    # a region edit changes nothing outside the region (pixel space: exactly)
    region = gen.toggle(["Smiling"], attributes=attrs, mask=a, region=["hair"], num_steps=3)
    base = gen.sample(attributes=attrs, mask=a, num_samples=1, num_steps=3)[0]
    outside = (a != C["hair"]).numpy()
    for img in region["images"][0]:
        assert close(img[outside], base[outside])
    inside = ~outside
    assert not np.array_equal(region["images"][0, 0][inside], region["images"][0, 1][inside])

    inter = gen.interpolate({"Male": 0}, {"Male": 1}, alphas=[0, 1], num_steps=3)
    ends = [gen.sample(attributes={"Male": v}, num_samples=1, num_steps=3)[0] for v in (0, 1)]
    assert close(inter["images"][0], ends[0]) and close(inter["images"][1], ends[1])
    with pytest.raises(ValueError, match=r"alphas=\[2.0\]: expected numbers in \[0, 1\]"):
        gen.interpolate({"Male": 0}, {"Male": 1}, alphas=[2])
    with pytest.raises(ValueError, match=r"toggle: unknown attribute\(s\) \['Blond'\]"):
        gen.toggle(["Blond"])


@pytest.mark.slow
def test_edit_cli_and_notebook(generator, tmp_path, monkeypatch):
    from PIL import Image

    from facediff.cli.sample import sample
    from facediff.config import compose

    _, ckpt = generator
    a, b = masks()
    for name, m in (("a", a), ("b", b)):
        Image.fromarray(m.numpy().astype(np.uint8)).save(tmp_path / f"{name}.png")
    for mode, extra in (
        ("swap", [f"mask={tmp_path / 'a.png'}", f"mask_b={tmp_path / 'b.png'}", "parts=[hair]"]),
        ("attributes", ["toggle=[Smiling,Male]", "attributes={Smiling: 1}"]),
        ("interpolate", ["attributes={Male: 0}", "attributes_b={Male: 1}", "alphas=[0,0.5,1]"]),
    ):
        out = tmp_path / mode
        cfg = compose(
            "sample",
            [f"ckpt_path={ckpt}", f"mode={mode}", "num_steps=2", f"output_dir={out}", *extra],
        )
        assert sample(cfg).is_file()
    notebook = Path(__file__).parents[1] / "notebooks" / "editing.ipynb"
    monkeypatch.setenv("FACEDIFF_CKPT", str(ckpt))
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3",
        resources={"metadata": {"path": str(notebook.parent)}},
    ).execute()  # fmt: skip
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("swap grid (1, 3, 16, 16, 3)" in str(o.get("text", "")) for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 4  # the four strips
