import pytest
import torch
from diffusers import AutoencoderKL

from facediff.models.autoencoders import DiffusersAutoencoder, PixelSpace
from facediff.models.conditioning import AttributeEncoder, Conditioner, MaskConcatEncoder
from facediff.models.unet import UNet


@pytest.mark.parametrize("patch_size", [1, 2])
def test_unet_forward_backward_with_tokens_spatial_and_vector(patch_size):
    unet = UNet(
        8,
        4,
        extra_in_channels=19,
        block_out_channels=(16, 32),
        layers_per_block=1,
        attention_levels=(False, True),
        cross_attention_dim=16,
        head_dim=8,
        vector_dim=6,
        norm_num_groups=8,
        patch_size=patch_size,
    )
    # patch_size p: the inner UNet sees (4 + 19) * p^2 channels at 8 / p pixels
    assert unet.unet.conv_in.in_channels == 23 * patch_size**2
    assert unet.unet.config.sample_size == 8 // patch_size
    cond = Conditioner(
        {"attrs": AttributeEncoder(3, 16, hidden=8), "mask": MaskConcatEncoder()}, 16
    )
    b = {
        "attrs": torch.ones(2, 3),
        "attrs_known": torch.ones(2, 3, dtype=torch.bool),
        "mask": torch.randint(0, 19, (2, 16, 16)),
    }
    c = cond(b, spatial_size=(8, 8))
    c.vector = torch.randn(2, 6)
    out = unet(torch.randn(2, 4, 8, 8), torch.tensor([1, 500]), c)
    assert out.shape == (2, 4, 8, 8)
    out.mean().backward()
    assert unet.unet.conv_in.weight.grad is not None


def test_unet_rejects_mismatched_options():
    with pytest.raises(
        ValueError, match="denoiser.patch_size=3: expected an integer >= 1 dividing"
    ):
        UNet(8, 4, block_out_channels=(16, 32), attention_levels=(False, True), patch_size=3)
    with pytest.raises(ValueError, match="attention_levels has 1 entries"):
        UNet(8, 4, block_out_channels=(16, 32), attention_levels=(True,), norm_num_groups=8)
    with pytest.raises(ValueError, match="divisible"):
        UNet(
            8,
            4,
            block_out_channels=(20, 40),
            attention_levels=(False, True),
            head_dim=8,
            norm_num_groups=8,
        )


def test_pixel_space_is_identity():
    x = torch.randn(2, 3, 8, 8)
    ae = PixelSpace()
    assert torch.equal(ae.decode(ae.encode(x)), x) and ae.latent_size(32) == 32


def tiny_kl(path, scaling_factor=0.5):
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        scaling_factor=scaling_factor,
    )
    vae.save_pretrained(path)
    return vae


def test_diffusers_autoencoder_from_local_folder(tmp_path):
    vae = tiny_kl(tmp_path / "vae", scaling_factor=0.5)
    ae = DiffusersAutoencoder(str(tmp_path / "vae"), kind="kl")
    assert ae.scaling_factor == 0.5 and ae.latent_channels == 4 and ae.downsample_factor == 2
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    z = ae.encode(x)
    assert z.shape == (1, 4, 8, 8)
    torch.testing.assert_close(z, vae.encode(x).latent_dist.mode() * 0.5)
    assert not any(p.requires_grad for p in ae.parameters())
    assert ae.decode(z).shape == (1, 3, 16, 16)
    assert (
        DiffusersAutoencoder(str(tmp_path / "vae"), scaling_factor=0.18215).scaling_factor
        == 0.18215
    )


def test_missing_weights_name_the_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty/config.json not found"):
        DiffusersAutoencoder(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="autoencoder.pretrained=.*config.json"):
        DiffusersAutoencoder("no-such-org/no-such-vae-xyz")


def test_unet_attention_patterns():
    from facediff.models.unet import attention_pattern

    assert attention_pattern("lowest", 4) == (False, False, False, True)
    assert attention_pattern("middle", 4) == (False, False, True, True)
    assert attention_pattern("middle", 5) == (False, False, True, True, True)
    assert attention_pattern("all", 6) == (True,) * 6
    assert attention_pattern([0, 1], 2) == (False, True)
    with pytest.raises(ValueError, match="attention_levels='top': expected a list of booleans"):
        attention_pattern("top", 4)
    unet = UNet(
        16, 3, block_out_channels=(8, 8, 16, 16, 16), attention_levels="middle",
        layers_per_block=1, cross_attention_dim=8, head_dim=8, norm_num_groups=8,
    )  # fmt: skip
    kinds = [type(b).__name__ for b in unet.unet.down_blocks]
    assert kinds == ["DownBlock2D"] * 2 + ["CrossAttnDownBlock2D"] * 3


@pytest.mark.parametrize("levels", [4, 5, 6])
def test_unet_variants_compose_and_train(make_cfg, levels):
    """The seed-000 variants' option files, shrunk in width only: levels x attention."""
    import numpy as np

    from facediff.cli.train import train
    from facediff.config import compose

    full = compose("train", [f"denoiser=unet_l{levels}", "data.resolution=128"]).denoiser
    assert len(full.block_out_channels) == levels and full.attention_levels == "lowest"
    cfg = make_cfg(
        f"denoiser=unet_l{levels}",
        "denoiser.attention_levels=middle",
        f"denoiser.block_out_channels=[{','.join(['16'] * levels)}]",
        "data.resolution=32",
        "trainer.fast_dev_run=true",
    )
    assert np.isfinite(train(cfg)["train/loss"])
