"""Write the notebooks' cells (python notebooks/build.py), then run them with their outputs saved
(python notebooks/build.py --execute [--ckpt PATH]): what `make notebooks` does after `make demo`.
The tests execute each notebook on a tiny model; the saved outputs are the demo model's."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent
FIND = '''def find_checkpoint() -> str:
    """FACEDIFF_CKPT, else the newest `make demo` checkpoint."""
    found = os.environ.get("FACEDIFF_CKPT") or max(
        glob.glob("../outputs/demo/*/checkpoints/last.ckpt"), default=None
    )
    if not found:
        raise FileNotFoundError("no checkpoint: run `make demo`, or set FACEDIFF_CKPT")
    return found'''

SHOW = '''def show(picture, scale: int = 3) -> Image.Image:
    """A uint8 picture (H, W, 3), enlarged (nearest neighbour) to be seen."""
    h, w = picture.shape[:2]
    return Image.fromarray(picture).resize((w * scale, h * scale), Image.NEAREST)'''

NOTEBOOKS = {
    "quickstart": [
        new_markdown_cell(
            "# facediff quickstart\n\nLoad a checkpoint written by `facediff-train` (by `make demo`, "
            "or `FACEDIFF_CKPT`) and sample faces for attributes and masks."
        ),
        new_code_cell(
            "import glob\nimport os\n\nimport numpy as np\nfrom PIL import Image\n\n"
            "from facediff import load_model\nfrom facediff.visualize import colorize, grid\n\n\n"
            + FIND
            + "\n\n\n"
            + SHOW
            + "\n\n\ngen = load_model(find_checkpoint())\n"
            'print("conditions:", gen.conditions)\nprint("attributes:", gen.attr_names)'
        ),
        new_markdown_cell(
            "Attributes only (the mask condition is dropped to its null embedding); names not "
            "given are *unknown*."
        ),
        new_code_cell(
            'smiling = gen.sample(\n    attributes={"Smiling": 1, "Eyeglasses": 1}, num_images=4, '
            "num_inference_steps=20, seed=0\n)\nprint(smiling.shape, smiling.dtype)\n"
            "show(grid([list(smiling)]))"
        ),
        new_markdown_cell(
            "A mask and attributes: a validation item's mask, the attributes changed, the seed kept."
        ),
        new_code_cell(
            "from facediff.data import PreparedDataset\n\n"
            'data = PreparedDataset(gen.model.data_info["root"])\n'
            'mask = np.array(data.arrays["masks"][data.split("val")[0]])\nrows = []\nfor attrs in (\n'
            '    {"Smiling": 0, "Wearing_Hat": 0},\n    {"Smiling": 1, "Wearing_Hat": 0},\n'
            '    {"Smiling": 1, "Wearing_Hat": 1},\n):\n'
            "    images = gen.sample(attributes=attrs, mask=mask, num_images=3, "
            "num_inference_steps=20, seed=1)\n"
            "    rows.append([colorize(mask)] + list(images))\nshow(grid(rows))"
        ),
    ],
    "editing": [
        new_markdown_cell(
            "# Editing a trained face model\n\nSame-noise edits: a part of another face's mask "
            "swapped in (`swap`), attributes toggled one at a time, optionally only inside a "
            "region (`toggle`), and an interpolation between two attribute sets (`interpolate`). "
            "The checkpoint: `FACEDIFF_CKPT`, else the newest `make demo` run, else a small model "
            "trained here (a few minutes on a CPU)."
        ),
        new_code_cell(
            "import glob\nimport os\n\nimport numpy as np\nfrom PIL import Image\n\n"
            "from facediff.api import FaceGenerator, datamodule_for\n"
            "from facediff.visualize import colorize, grid\n\n\n"
            "def find_or_train() -> str:\n"
            '    found = os.environ.get("FACEDIFF_CKPT") or max(\n'
            '        glob.glob("../outputs/demo/*/checkpoints/last.ckpt"), default=None\n    )\n'
            "    if found:\n        return found\n"
            "    from facediff.cli.train import train\n    from facediff.config import compose\n\n"
            '    out = "../outputs/notebook_editing"\n'
            "    overrides = [\n"
            '        "experiment=demo",\n'
            '        "trainer.max_steps=300",\n'
            '        "evaluate_after=false",\n'
            '        "callbacks.fidelity.every_n_steps=0",\n'
            '        "logger=csv",\n'
            '        "paths.data_dir=../data",\n'
            '        f"paths.output_dir={out}",\n'
            "    ]\n"
            '    train(compose("train", overrides))\n'
            '    return f"{out}/checkpoints/last.ckpt"\n\n\n'
            + SHOW
            + "\n\n\ngen = FaceGenerator.from_checkpoint(find_or_train())\n"
            'print("attributes:", gen.attr_names)'
        ),
        new_markdown_cell(
            "Face A's mask, face B's hair put into it: A, A with B's hair, and the swapped mask."
        ),
        new_code_cell(
            "dm = datamodule_for(gen.model)\n"
            'val = dm.dataset("val")\n'
            'mask_a, mask_b = val[0]["mask"], val[1]["mask"]\n'
            'swap = gen.swap(mask_a, mask_b, parts=["hair"], attributes={"Smiling": 1}, '
            "num_inference_steps=25)\n"
            'row = [swap["original"], swap["swapped"], colorize(swap["mask"])]\n'
            'print("swap grid", np.stack(row)[None].shape)\nshow(grid([row]))'
        ),
        new_markdown_cell(
            "Attributes toggled one at a time (rows), off and on (columns), with the same noise; "
            "then the same edits kept inside the hair."
        ),
        new_code_cell(
            "edits = gen.toggle(gen.attr_names[:4], mask=mask_a, num_inference_steps=25)\n"
            'print("attribute grid", edits["images"].shape, edits["attributes"])\n'
            'show(grid([list(pair) for pair in edits["images"]]))'
        ),
        new_code_cell(
            'in_hair = gen.toggle(gen.attr_names[:2], mask=mask_a, region=["hair"], '
            "num_inference_steps=25)\n"
            'show(grid([list(pair) for pair in in_hair["images"]]))'
        ),
        new_markdown_cell("From one attribute set to another at alpha 0, 0.25, ..., 1."),
        new_code_cell(
            "first = gen.attr_names[0]\n"
            "inter = gen.interpolate({first: 0}, {first: 1}, mask=mask_a, num_inference_steps=25)\n"
            'print("interpolation", inter["images"].shape, inter["alphas"])\n'
            'show(grid([list(inter["images"])]))'
        ),
    ],
    "training": [
        new_markdown_cell(
            "# Training in a notebook\n\nCompose a config as `facediff-train` would, train a "
            "small model on SynthFaces (16 px, under a minute on a CPU), and look at its sample "
            "grid and its metrics. Every option of the command line is an override here."
        ),
        new_code_cell(
            "import os\nfrom pathlib import Path\n\nfrom PIL import Image\n\n"
            "from facediff.cli.train import train\nfrom facediff.config import compose\n\n"
            'data_dir = os.environ.get("FACEDIFF_DATA_DIR", "../data")\n'
            'out = Path(os.environ.get("FACEDIFF_NOTEBOOK_OUT", "../outputs/notebook_training"))\n'
            "cfg = compose(\n"
            '    "train",\n    [\n'
            '        "conditioner=attr_mask_concat",\n'
            '        "denoiser=unet_small",\n'
            '        "data.resolution=16",\n'
            '        "data.source.num_faces=200",\n'
            '        "data.source.image_size=32",\n'
            '        "data.source.mask_size=32",\n'
            '        f"data.root={data_dir}/notebook_synthfaces_16px",\n'
            '        f"data.raw_dir={data_dir}/notebook_synthfaces_raw",\n'
            '        "trainer.max_steps=60",\n'
            '        "trainer.val_check_interval=60",\n'
            '        "callbacks.sample_grid.every_n_steps=60",\n'
            '        "callbacks.fidelity.every_n_steps=0",\n'
            '        "logger=csv",\n'
            '        "trainer.enable_progress_bar=false",\n'
            '        "~callbacks.progress_bar",\n'
            '        f"paths.output_dir={out}",\n'
            "    ],\n)\n"
            "metrics = train(cfg)\n"
            '{k: round(v, 4) for k, v in metrics.items() if k.startswith(("train/", "val/"))}'
        ),
        new_markdown_cell(
            "Its sample grid: each row a validation face, its mask, and samples for that mask and "
            "its attributes (after only 60 steps: blobs in the right places)."
        ),
        new_code_cell(
            'grid_png = sorted((out / "samples").glob("step_*.png"))[-1]\n'
            "image = Image.open(grid_png)\n"
            "image.resize((image.width * 3, image.height * 3), Image.NEAREST)"
        ),
    ],
    "study": [
        new_markdown_cell(
            "# Reading a study\n\nA small study from one command (`facediff-train -m`: two "
            "conditionings, two seeds, each trained briefly and evaluated), its table from "
            "`facediff-report`, and its numbers (`results.csv`: mean, std and n per setting and "
            "metric) in pandas, plotted with their spread over seeds. A real study is the same "
            "with `+study=<name>` (docs/running-studies.md); set `FACEDIFF_STUDY` to a multirun "
            "folder of yours to read it instead."
        ),
        new_code_cell(
            "import os\nimport subprocess\nimport sys\nfrom pathlib import Path\n\n"
            "import matplotlib.pyplot as plt\nimport pandas as pd\n\n"
            "from facediff.evaluation.study import report\n\n"
            'data_dir = os.environ.get("FACEDIFF_DATA_DIR", "../data")\n'
            'sweep = Path(os.environ.get("FACEDIFF_STUDY", "../outputs/notebook_study"))\n'
            'if not (sweep / "multirun.yaml").is_file():\n'
            "    tiny = [\n"
            '        "data.resolution=16", "data.source.num_faces=200", "data.source.image_size=32",\n'
            '        "data.source.mask_size=32", f"data.root={data_dir}/notebook_synthfaces_16px",\n'
            '        f"data.raw_dir={data_dir}/notebook_synthfaces_raw", "denoiser=unet_small",\n'
            '        "trainer.max_steps=40", "trainer.val_check_interval=40", "logger=csv",\n'
            '        "callbacks.sample_grid.every_n_steps=0", "callbacks.fidelity.every_n_steps=0",\n'
            '        "~callbacks.progress_bar", "trainer.enable_progress_bar=false",\n'
            '        "evaluate_after=true", "evaluation.num_conditions=16",\n'
            '        "evaluation.diversity_conditions=0", "evaluation.kid_subset_size=8",\n'
            '        "evaluation.inception=null", "evaluation.num_steps=10",\n'
            '        "evaluation.parser_steps=60", "evaluation.classifier_steps=60",\n'
            "    ]\n"
            "    command = [\n"
            '        sys.executable, "-m", "facediff.cli.train", "-m", *tiny,\n'
            '        "conditioner=attr,attr_mask_concat", "seed=0,1", f"hydra.sweep.dir={sweep}",\n'
            "    ]\n"
            "    subprocess.run(command, check=True, capture_output=True)\n"
            'table = report([sweep], sweep / "report")\n'
            'print(table["markdown"])'
        ),
        new_markdown_cell("The numbers behind the cells, one line per setting, row and metric:"),
        new_code_cell(
            'results = pd.read_csv(sweep / "report" / "results.csv")\n'
            'own = results[results["row"] == "samples vs own conditions"]\n'
            'own.pivot(index="setting", columns="column", values="mean").round(3)'
        ),
        new_markdown_cell(
            "Attribute accuracy against own and shuffled conditions, mean ± std over the seeds. "
            "After 40 steps these models have learned little, so own and shuffled are alike; a "
            "model that follows its conditions scores clearly higher on its own (the studies in "
            "docs/studies/, 600 steps)."
        ),
        new_code_cell(
            'acc = results[results["column"] == "attr_acc"]\n'
            "fig, ax = plt.subplots(figsize=(6, 3))\n"
            'for offset, (row, part) in zip((-0.15, 0.15), acc.groupby("row")):\n'
            "    x = range(len(part))\n"
            "    ax.errorbar(\n"
            '        [i + offset for i in x], part["mean"], yerr=part["std"], fmt="o", capsize=4,\n'
            '        label=row.replace("samples vs ", ""),\n'
            "    )\n"
            'ax.set_xticks(range(len(part)), part["setting"], fontsize=8)\n'
            'ax.set_ylabel("attribute accuracy")\nax.legend()\nfig.tight_layout()'
        ),
    ],
}


def write() -> None:
    """Each notebook's cells, formatted as `ruff format` would; a notebook whose cells are
    unchanged keeps its saved outputs."""
    import shutil
    import subprocess
    import tempfile

    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=cells)
        nb.metadata["kernelspec"] = {
            "display_name": "Python 3",
            "language": "python",
            "name": "python3",
        }
        path = HERE / f"{name}.ipynb"
        with tempfile.TemporaryDirectory() as tmp:
            fresh = Path(tmp) / path.name
            nbformat.write(nb, fresh)
            ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
            subprocess.run([ruff, "format", "-q", str(fresh)], check=True)
            nb = nbformat.read(fresh, as_version=4)
        old = nbformat.read(path, as_version=4) if path.is_file() else None
        if old is not None and [c.source for c in old.cells] == [c.source for c in nb.cells]:
            continue  # the same cells: keep the saved outputs
        nbformat.write(nb, path)


def keep_results(nb) -> None:
    """Drop the stderr streams (warnings, progress bars, this machine's paths) from the saved
    outputs: what stays is what the notebook shows."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if o.get("name") != "stderr"]


def execute(ckpt: str | None) -> None:
    from nbclient import NotebookClient

    if ckpt:
        os.environ["FACEDIFF_CKPT"] = str(Path(ckpt).resolve())
    for name in NOTEBOOKS:
        path = HERE / f"{name}.ipynb"
        nb = nbformat.read(path, as_version=4)
        NotebookClient(
            nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}
        ).execute()
        keep_results(nb)
        nbformat.write(nb, path)
        print(f"{path}: {path.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--execute", action="store_true")
    parser.add_argument("--ckpt")
    args = parser.parse_args()
    write()
    if args.execute:
        execute(args.ckpt)
