"""The denoiser contract: `denoiser(zt, t, cond) -> prediction`, with `cond` a `Condition`.

What every denoiser (`facediff.models.unet.UNet`, `facediff.models.dit.DiT`, SD's UNet under
LoRA) shares: the `Condition` the conditioner hands it, the weight of its vector condition over
the timesteps (`vector_schedule`), the contract's checks and its input (latent + spatial
condition maps)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

KINDS = ("tokens", "spatial", "vector")


@dataclass
class Condition:
    tokens: Tensor  # (B, L, D)
    token_mask: Tensor  # (B, L) bool
    vector: Tensor | None = None  # (B, Dv)
    spatial: Tensor | None = None  # (B, Cs, h, w)
    token_groups: dict[str, tuple[int, int]] | None = None  # condition -> its token range

    @staticmethod
    def cat(conds: list[Condition]) -> Condition:
        """Stack conditions along the batch axis (CFG runs them in one forward pass)."""

        def cat(xs):
            return None if xs[0] is None else torch.cat(xs)

        return Condition(
            *(
                cat([getattr(c, f) for c in conds])
                for f in ("tokens", "token_mask", "vector", "spatial")
            ),
            token_groups=conds[0].token_groups,
        )


VECTOR_SCHEDULES = ("constant", "cosine")


def vector_schedule(t: Tensor, kind: str = "constant", num_train_timesteps: int = 1000) -> Tensor:
    """The weight (B,) of the vector (control) condition at timestep t (0 .. T, flow's t * T
    too): "constant" 1; "cosine" (1 - cos(pi t / T)) / 2, phased in over the noise level from
    0 on clean inputs to 1 on pure noise, where the global layout (crop, flip) is decided
    (arXiv 2411.03177)."""
    if check_vector_schedule(kind) == "constant":
        return torch.ones_like(t, dtype=torch.float32)
    x = (t.float() / num_train_timesteps).clamp(0, 1)
    return (1 - torch.cos(math.pi * x)) / 2


def check_vector_schedule(kind: str) -> str:
    if kind not in VECTOR_SCHEDULES:
        raise ValueError(f"denoiser.vector_schedule={kind!r}: expected one of {VECTOR_SCHEDULES}")
    return kind


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
