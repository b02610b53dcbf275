"""facediff-export: a diffusers pipeline folder that loads without facediff (trust_remote_code)
and gives the same images as facediff-sample for the same seed."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from facediff.api import FaceGenerator
from facediff.cli.train import train
from facediff.export import export, shipped_sources
from facediff.pipeline import build

# run in a fresh process where importing facediff fails: the folder must stand on its own
LOAD = textwrap.dedent(
    """
    import sys

    class NoFacediff:
        def find_spec(self, name, path=None, target=None):
            if name == "facediff" or name.startswith("facediff."):
                raise ImportError("facediff must not be imported by an exported pipeline")

    sys.meta_path.insert(0, NoFacediff())
    import numpy as np
    from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler

    folder, out, trust = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=trust)
    mask = np.zeros((16, 16), dtype=np.int64)
    mask[4:12, 4:12] = 1
    a = pipe(attributes={"Smiling": 1}, mask=mask, num_images=2, seed=3, output_type="np")
    b = pipe(attributes={"Smiling": 1}, mask=mask, num_images=2, seed=4, output_type="np")
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    c = pipe(attributes={"Male": 0}, num_images=1, num_inference_steps=3, output_type="np")
    np.savez(out, a=a.images, b=b.images, c=c.images, pil=len(pipe(num_images=1).images))
    assert not [m for m in sys.modules if m == "facediff" or m.startswith("facediff.")]
    print(type(pipe).__name__, type(pipe.denoiser).__name__, pipe.config.attribute_names)
    """
)


def load_elsewhere(folder: Path, tmp_path: Path, trust: bool = True):
    script = tmp_path / "load.py"
    script.write_text(LOAD)
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [
            sys.executable,
            str(script),
            str(folder),
            str(tmp_path / "out.npz"),
            "1" if trust else "0",
        ],
        cwd=tmp_path,  # not the checkout: facediff is not importable from the working directory
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def trained(make_cfg):
    cfg = make_cfg(
        "conditioner=attr_mask_concat",
        "trainer.max_steps=2",
        "sampler.num_steps=4",
        "data.attributes=[Smiling,Male]",
    )
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


def test_exported_pipeline_matches_facediff_sample_without_facediff(trained, tmp_path):
    out = export(trained, tmp_path / "pipe")
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ["facediff_pipeline", "FaceDiffPipeline"]
    assert index["denoiser"] == ["facediff_pipeline", "FaceDiffDenoiser"]
    assert index["scheduler"][0] == "diffusers" and index["vae"] == [None, None]
    assert (out / "denoiser" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.ckpt"))  # no pickles
    for f in out.rglob("facediff_*.py"):  # every shipped import is relative
        assert "from facediff." not in f.read_text() and "import facediff" not in f.read_text()

    run = load_elsewhere(out, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "FaceDiffPipeline FaceDiffDenoiser ['Smiling', 'Male']" in run.stdout
    got = np.load(tmp_path / "out.npz")
    assert got["a"].shape == (2, 16, 16, 3) and got["a"].dtype == np.uint8 and got["pil"] == 1
    assert not np.array_equal(got["a"], got["b"])  # the seed matters
    assert got["c"].shape == (1, 16, 16, 3)  # another diffusers solver swapped in

    gen = FaceGenerator.from_checkpoint(trained)
    mask = np.zeros((16, 16), dtype=np.int64)
    mask[4:12, 4:12] = 1
    want = gen.sample(attributes={"Smiling": 1}, mask=mask, num_samples=2, seed=3)
    np.testing.assert_array_equal(got["a"], want)  # the same images as facediff-sample


def test_export_cli_needs_trust_remote_code_and_refuses_foreign_targets(trained, tmp_path):
    out = tmp_path / "pipe"
    cli = [sys.executable, "-m", "facediff.cli.export", f"ckpt_path={trained}", f"out={out}"]
    run = subprocess.run(
        cli + [f"hydra.run.dir={tmp_path / 'log'}"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "trust_remote_code=True" in run.stdout and (out / "model_index.json").is_file()
    run = load_elsewhere(out, tmp_path, trust=False)
    assert run.returncode != 0 and "trust_remote_code=True" in run.stderr
    with pytest.raises(FileExistsError, match="overwrite=true"):
        export(trained, out)
    assert export(trained, out, overwrite=True) == out
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a pipeline folder"):
        export(trained, tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "a.txt").read_text() == "mine"
    # a component config names classes, never code: anything else is refused, named
    with pytest.raises(ValueError, match=r"denoiser._target_='os.system': not a facediff model"):
        build({"_target_": "os.system", "command": "true"}, "denoiser")


def test_shipped_sources_are_the_pipeline_and_its_facediff_imports():
    files = shipped_sources()
    assert {"facediff_pipeline.py", "facediff_unet.py", "facediff_dit.py"} <= set(files)
    assert {"facediff_sampling.py", "facediff_conditioning.py", "facediff_labels.py"} <= set(files)
    assert "facediff_training.py" not in files and "facediff_api.py" not in files
    assert "from .facediff_denoiser import" in files["facediff_unet.py"]  # imports made relative
    assert {"facediff_denoiser.py", "facediff_objectives.py", "facediff_transforms.py"} <= set(
        files
    )


def test_a_flow_model_exported_with_dpmpp_samples_on_the_flow(make_cfg):
    """objective=flow with sampler=dpmpp_2m: the exported scheduler is DPM-Solver++ on flow
    sigmas (flow_prediction), and the pipeline gives facediff-sample's images."""
    from facediff.checkpoint import load
    from facediff.export import build_pipeline

    cfg = make_cfg("objective=flow", "sampler=dpmpp_2m", "trainer.max_steps=2", "conditioner=attr")
    train(cfg)
    ckpt_path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    pipe = build_pipeline(load(ckpt_path))
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert pipe.scheduler.config.use_flow_sigmas
    assert pipe.scheduler.config.prediction_type == "flow_prediction"
    got = pipe(attributes={"Smiling": 1}, num_images=2, seed=5, output_type="np").images
    want = FaceGenerator.from_checkpoint(ckpt_path).sample(
        attributes={"Smiling": 1}, num_samples=2, seed=5
    )
    np.testing.assert_array_equal(got, want)
