"""The DiT denoiser: shapes, adaLN-Zero start, patch layout, token mask, options, every conditioner."""

from pathlib import Path

import numpy as np
import pytest
import torch

from facediff.api import FaceGenerator
from facediff.cli.train import train
from facediff.models.denoiser import Condition
from facediff.models.dit import DiT

CONDITIONERS = sorted(  # but prompt: a pretrained text encoder's (tests/models/test_lora_sd2.py)
    p.stem
    for p in (Path(__file__).parents[2] / "conf" / "conditioner").glob("*.yaml")
    if p.stem != "prompt"
)


def condition(b=2, length=3, dim=16, vector=None, spatial=None):
    return Condition(
        tokens=torch.randn(b, length, dim),
        token_mask=torch.ones(b, length, dtype=torch.bool),
        vector=vector,
        spatial=spatial,
    )


def randomise_output(dit: DiT) -> None:
    """Leave adaLN-Zero's start: give the zero-initialised layers random weights."""
    g = torch.Generator().manual_seed(0)
    for m in [dit.proj_out, dit.out_modulation] + [b.norm1.linear for b in dit.blocks]:
        m.weight.data = torch.randn(m.weight.shape, generator=g) * 0.1
        m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1


@pytest.mark.parametrize("positions", ["sincos", "learned"])
def test_dit_forward_backward_with_tokens_spatial_and_vector(positions):
    dit = DiT(
        8, 4, extra_in_channels=19, patch_size=2, hidden_size=32, depth=2, num_heads=2,
        cross_attention_dim=16, vector_dim=6, positions=positions,
    )  # fmt: skip
    cond = condition(vector=torch.randn(2, 6), spatial=torch.randn(2, 19, 8, 8))
    zt, t = torch.randn(2, 4, 8, 8), torch.tensor([1, 500])
    out = dit(zt, t, cond)
    assert out.shape == (2, 4, 8, 8)
    # adaLN-Zero: every block starts as the identity and the output layer at zero
    assert torch.equal(out, torch.zeros_like(out))
    randomise_output(dit)
    out = dit(zt, t, cond)
    out.square().mean().backward()
    for name in (
        "patch_embed.proj.weight",
        "blocks.0.attn2.to_k.weight",
        "vector_embed.linear_1.weight",
    ):
        assert dit.get_parameter(name).grad.abs().sum() > 0, name
    assert (dit.pos is not None) == (positions == "learned")
    # a scalar timestep (the samplers pass one per batch) is broadcast
    assert torch.allclose(dit(zt, torch.tensor(500), cond)[1], out[1].detach(), atol=1e-6)


def test_dit_unpatchify_puts_each_patch_back_in_place():
    """With no blocks, each output patch depends on its own input patch only: the output
    layout is the inverse of the patch embedding's."""
    dit = DiT(8, 3, patch_size=2, hidden_size=16, depth=0, num_heads=2, cross_attention_dim=16)
    randomise_output(dit)
    x = torch.randn(1, 3, 8, 8)
    base = dit(x, torch.tensor([10]), condition(1))
    x2 = x.clone()
    x2[0, :, 5, 2] += 1.0  # a pixel of patch (row 2, column 1)
    diff = (dit(x2, torch.tensor([10]), condition(1)) - base).abs().sum(1)[0]
    changed = diff > 1e-6
    assert changed[4:6, 2:4].all() and changed.sum() == 4


def test_dit_masked_tokens_are_ignored():
    dit = DiT(8, 3, patch_size=4, hidden_size=16, depth=2, num_heads=2, cross_attention_dim=16)
    randomise_output(dit)
    cond = condition(1, length=4)
    cond.token_mask[:, 2:] = False
    base = dit(torch.ones(1, 3, 8, 8), torch.tensor([3]), cond)
    cond.tokens[:, 2:] = 100.0  # only the masked tokens change
    assert torch.allclose(dit(torch.ones(1, 3, 8, 8), torch.tensor([3]), cond), base, atol=1e-5)
    cond.tokens[:, 0] = 100.0  # a token it attends to does change it
    assert not torch.allclose(dit(torch.ones(1, 3, 8, 8), torch.tensor([3]), cond), base)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"patch_size": 3}, "denoiser.patch_size=3: expected an integer >= 1 dividing"),
        ({"hidden_size": 30, "num_heads": 4}, "denoiser.hidden_size=30 is not divisible"),
        ({"positions": "rope"}, "denoiser.positions='rope': expected one of"),
    ],
)
def test_dit_rejects_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DiT(**{"sample_size": 8, "in_channels": 3, "hidden_size": 16, "num_heads": 2} | kwargs)


@pytest.mark.parametrize("size", ["dit_s", "dit_b", "dit_l", "dit_tiny"])
def test_dit_sizes_compose_at_paper_scale(size):
    """The option files at 256 px with VQ-f4 latents (64 x 64 x 3, the papers' setting)."""
    from facediff.config import compose

    cfg = compose(
        "train", ["autoencoder=ldm_vq_f4", "data.resolution=256", f"denoiser={size}"]
    ).denoiser
    expected = {"dit_s": (384, 12, 6), "dit_b": (768, 12, 12), "dit_l": (1024, 24, 16)}
    if size in expected:
        assert (cfg.hidden_size, cfg.depth, cfg.num_heads, cfg.patch_size) == (*expected[size], 2)
    assert cfg.sample_size == 64 and cfg.in_channels == 3


@pytest.mark.parametrize("conditioner", CONDITIONERS)
def test_dit_trains_under_every_conditioner(make_cfg, conditioner):
    extra = ["conditioner.encoders.mask.sr_ratios=[1,1,1,1]"] if "segformer" in conditioner else []
    cfg = make_cfg(
        "denoiser=dit_tiny", f"conditioner={conditioner}", "trainer.fast_dev_run=true", *extra
    )
    assert np.isfinite(train(cfg)["train/loss"])


def test_dit_checkpoint_samples_through_the_api(make_cfg):
    cfg = make_cfg("denoiser=dit_tiny", "conditioner=attr_mask_concat", "sampler=dpmpp_2m")
    train(cfg)
    gen = FaceGenerator.from_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert type(gen.model.denoiser).__name__ == "DiT"
    images = gen.sample(attributes={"Smiling": 1}, num_samples=2, num_steps=2)
    assert images.shape == (2, 16, 16, 3)
