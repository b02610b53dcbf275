"""First stages: pixel space, or a frozen diffusers AutoencoderKL / VQModel.

Interface: `encode(image) -> latent` (already scaled), `decode(latent) -> image`,
`latent_channels`, `downsample_factor`, `latent_size(image_size)`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from facediff.models.pretrained import from_pretrained

# The scale that brings each known first stage's latents to about unit variance.
KNOWN_SCALING_FACTORS = {"kl": 0.18215, "vq": 1.0}  # SD-VAE (KL-f8), LDM VQ-f4


class Autoencoder(nn.Module):
    latent_channels: int
    downsample_factor: int

    def latent_size(self, image_size: int) -> int:
        if image_size % self.downsample_factor:
            raise ValueError(
                f"image size {image_size} is not divisible by the autoencoder's downsampling "
                f"factor {self.downsample_factor}"
            )
        return image_size // self.downsample_factor

    def encode(self, image: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, latent: Tensor) -> Tensor:
        raise NotImplementedError


class PixelSpace(Autoencoder):
    """Identity first stage: diffusion runs on the pixels in [-1, 1]."""

    latent_channels = 3
    downsample_factor = 1

    def encode(self, image):
        return image

    def decode(self, latent):
        return latent


class DiffusersAutoencoder(Autoencoder):
    """A frozen diffusers AutoencoderKL or VQModel loaded with `from_pretrained`.

    Args:
        pretrained: hub name or local folder (the one facediff's own autoencoder training
            writes, or e.g. a downloaded `CompVis/ldm-celebahq-256` vqvae folder).
        kind: "kl" or "vq".
        scaling_factor: None takes the model config's `scaling_factor` when it has one, else the
            known default for the kind (KL 0.18215, VQ 1.0).
        subfolder: e.g. "vae" or "vqvae" inside a pipeline folder.
        image_size: the image resolution it is used at (for `latent_shape` checks).
    """

    def __init__(
        self,
        pretrained: str,
        kind: str = "kl",
        scaling_factor: float | None = None,
        subfolder: str | None = None,
    ):
        super().__init__()
        from diffusers import AutoencoderKL, VQModel

        classes = {"kl": AutoencoderKL, "vq": VQModel}
        if kind not in classes:
            raise ValueError(f"autoencoder.kind: expected one of {list(classes)}, got {kind!r}")
        kwargs = {"subfolder": subfolder} if subfolder else {}
        hint = "facediff's own small autoencoder is written by `facediff-train experiment=autoencoder`"
        self.model = from_pretrained(
            classes[kind], pretrained, "autoencoder.pretrained", hint, **kwargs
        )
        self.model.requires_grad_(False).eval()
        self.kind = kind
        cfg_scale = getattr(self.model.config, "scaling_factor", None)
        self.scaling_factor = float(scaling_factor or cfg_scale or KNOWN_SCALING_FACTORS[kind])
        self.latent_channels = self.model.config.latent_channels
        self.downsample_factor = 2 ** (len(self.model.config.block_out_channels) - 1)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # frozen, always
        return self

    @torch.no_grad()
    def encode(self, image):
        if self.kind == "kl":
            z = self.model.encode(image).latent_dist.mode()
        else:
            z = self.model.encode(image).latents  # before quantisation, as LDM trains on them
        return z * self.scaling_factor

    @torch.no_grad()
    def decode(self, latent):
        return self.model.decode(latent / self.scaling_factor).sample.clamp(-1, 1)
