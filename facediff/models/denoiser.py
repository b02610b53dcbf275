"""What every denoiser (`facediff.models.unet.UNet`, `facediff.models.dit.DiT`) shares: the
`denoiser(zt, t, cond)` contract's checks and its input (latent + spatial condition maps)."""

from __future__ import annotations

import torch
from torch import Tensor

from facediff.models.conditioning import Condition


def check_patch_size(patch_size: int, sample_size: int) -> None:
    if patch_size < 1 or sample_size % patch_size:
        raise ValueError(
            f"denoiser.patch_size={patch_size}: expected an integer >= 1 dividing "
            f"denoiser.sample_size={sample_size}"
        )


def denoiser_input(
    zt: Tensor, cond: Condition, in_channels: int, extra_in_channels: int
) -> Tensor:
    """The latent with the spatial ("concat") conditions appended along channels, checked."""
    x = zt if cond.spatial is None else torch.cat([zt, cond.spatial.to(zt.dtype)], 1)
    if x.shape[1] != in_channels + extra_in_channels:
        raise ValueError(
            f"denoiser: input has {x.shape[1]} channels, expected in_channels "
            f"{in_channels} + extra_in_channels {extra_in_channels}"
        )
    return x
