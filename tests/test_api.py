"""The inference API speaks the exported pipeline's (diffusers') vocabulary, and Lightning's
`load_from_checkpoint` reads a facediff-train checkpoint through the safe loader."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facediff.api import FaceGenerator, load_checkpoint
from facediff.cli.train import train
from facediff.config import UnsafeConfigError
from facediff.export import build_pipeline
from facediff.lit.diffusion import LatentDiffusion


@pytest.fixture
def ckpt(make_cfg):
    cfg = make_cfg("conditioner=attr_mask_concat", "trainer.max_steps=2", "sampler.num_steps=3")
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


def test_sample_takes_the_pipelines_names_and_gives_the_same_faces(ckpt):
    gen = FaceGenerator.from_checkpoint(ckpt)
    attrs = {gen.attr_names[0]: 1}
    ours = gen.sample(attributes=attrs, num_samples=2, num_steps=3, seed=5)  # facediff's names
    theirs = gen.sample(
        attributes=attrs,
        num_images_per_prompt=2,
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(5),
    )
    assert ours.shape == (2, 16, 16, 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, theirs)  # a generator seeded alike: the same faces
    pil = gen.sample(
        attributes=attrs, num_images=2, num_inference_steps=3, seed=5, output_type="pil"
    )
    assert [im.size for im in pil] == [(16, 16)] * 2 and isinstance(pil[0], Image.Image)
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in pil]), ours)
    pt = gen.sample(
        attributes=attrs, num_images=2, num_inference_steps=3, seed=5, output_type="pt"
    )
    assert pt.shape == (2, 3, 16, 16) and pt.min() >= -1 and pt.max() <= 1
    with pytest.raises(ValueError, match="num_images=2 and num_samples=3: give one of the two"):
        gen.sample(num_images=2, num_samples=3)
    with pytest.raises(ValueError, match="output_type='jpg': expected 'np', 'pil' or 'pt'"):
        gen.sample(output_type="jpg")
    assert gen.to("cpu") is gen and gen.to(dtype=torch.float64).model.dtype == torch.float64

    # the exported pipeline takes the same names and gives the same faces
    pipe = build_pipeline(load_checkpoint(ckpt), path=ckpt)
    out = pipe(
        attributes=attrs,
        num_images_per_prompt=2,
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(5),
        output_type="np",
    ).images
    np.testing.assert_array_equal(out, ours)


def test_lightning_load_from_checkpoint_goes_through_the_safe_loader(ckpt, tmp_path):
    model = LatentDiffusion.load_from_checkpoint(ckpt)
    trained = torch.load(ckpt, weights_only=True)["state_dict"]
    for name, value in model.state_dict().items():  # the trained weights (use_ema=False)
        torch.testing.assert_close(value, trained[name], rtol=0, atol=0)
    ema = LatentDiffusion.load_from_checkpoint(ckpt, use_ema=True)
    gen = FaceGenerator.from_checkpoint(ckpt)  # EMA weights: the same model
    for a, b in zip(ema.trainable_parameters(), gen.model.trainable_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\['lr'\] not taken; the model is rebuilt"):
        LatentDiffusion.load_from_checkpoint(ckpt, lr=1.0)
    # a recorded config naming other code is refused, as everywhere
    bad = torch.load(ckpt, weights_only=True)
    bad["facediff"]["config"]["model"]["denoiser"]["_target_"] = "os.system"
    torch.save(bad, tmp_path / "bad.ckpt")
    with pytest.raises(UnsafeConfigError, match="os.system"):
        LatentDiffusion.load_from_checkpoint(tmp_path / "bad.ckpt")
