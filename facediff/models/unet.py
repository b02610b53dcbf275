"""UNet denoiser on diffusers' UNet2DConditionModel: `denoiser(zt, t, cond) -> prediction`."""

from __future__ import annotations

import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch import Tensor, nn

from facediff.models.denoiser import (
    Condition,
    check_patch_size,
    check_vector_schedule,
    denoiser_input,
    vector_schedule,
)
from facediff.models.routing import route

ATTENTION_PATTERNS = ("lowest", "middle", "all")


def attention_pattern(pattern, levels: int) -> tuple[bool, ...]:
    """`attention_levels` as one bool per level, from a list or a named pattern."""
    if isinstance(pattern, str):
        if pattern not in ATTENTION_PATTERNS:
            raise ValueError(
                f"denoiser.attention_levels={pattern!r}: expected a list of booleans, one per "
                f"level, or one of {ATTENTION_PATTERNS}"
            )
        first = {"lowest": levels - 1, "middle": levels // 2, "all": 0}[pattern]
        return tuple(i >= first for i in range(levels))
    return tuple(bool(a) for a in pattern)


class UNet(nn.Module):
    """Args map onto UNet2DConditionModel.

    Args:
        sample_size: latent height/width.
        in_channels: latent channels; `extra_in_channels` more come from the conditioner's
            spatial maps (the "concat" / "hybrid" conditioning).
        block_out_channels: width per level (depth = its length).
        attention_levels: per level, True for self-attn -> cross-attn -> FFN blocks; or a
            pattern (`ATTENTION_PATTERNS`): "lowest" (the lowest-resolution level only),
            "middle" (from the middle level down: levels n//2 .. n-1), "all".
        cross_attention_dim: token width of the conditioner.
        head_dim: channels per attention head (64 in the CVIU paper).
        vector_dim: width of the conditioner's vector (added to the time embedding); 0: none.
        mid_attention: cross-attention in the middle block.
        patch_size: fold p x p pixels into channels before the UNet (pixel unshuffle) and unfold
            its output (pixel shuffle): the UNet runs at sample_size / p with in_channels * p^2
            channels, so its first level costs about p^2 times fewer FLOPs per sample. 1: off.
        vector_schedule: the weight of the vector (control) condition over the noise level:
            "constant" or "cosine" (`facediff.models.conditioning.vector_schedule`).
        routing: {stage: [condition, ...]} for the stages down / mid / up: which token
            conditions each stage's cross-attention sees (`facediff.models.routing`); None:
            every stage sees all tokens.
        routing_form: "concat" (one attention over the stage's conditions' tokens) or "sum"
            (one attention per condition, summed with weights lambda).
        routing_lambda: "learned" or "fixed" lambdas of the "sum" form, starting at
            routing_lambda_init.
    """

    def __init__(
        self,
        sample_size: int,
        in_channels: int,
        extra_in_channels: int = 0,
        out_channels: int | None = None,
        block_out_channels: tuple[int, ...] = (128, 256, 512),
        layers_per_block: int = 2,
        attention_levels: tuple[bool, ...] | str = (False, True, True),
        cross_attention_dim: int = 512,
        head_dim: int = 64,
        vector_dim: int = 0,
        mid_attention: bool = True,
        norm_num_groups: int = 32,
        dropout: float = 0.0,
        patch_size: int = 1,
        vector_schedule: str = "constant",
        routing: dict[str, list[str]] | None = None,
        routing_form: str = "concat",
        routing_lambda: str = "learned",
        routing_lambda_init: float = 1.0,
    ):
        super().__init__()
        block_out_channels = tuple(block_out_channels)
        attention_levels = attention_pattern(attention_levels, len(block_out_channels))
        check_patch_size(patch_size, sample_size)
        if len(attention_levels) != len(block_out_channels):
            raise ValueError(
                f"denoiser.attention_levels has {len(attention_levels)} entries, "
                f"denoiser.block_out_channels {len(block_out_channels)}; give one per level"
            )
        bad = [c for c in block_out_channels if c % norm_num_groups or c % head_dim]
        if bad:
            raise ValueError(
                f"denoiser.block_out_channels {list(block_out_channels)}: each must be divisible "
                f"by norm_num_groups={norm_num_groups} and head_dim={head_dim}"
            )
        self.patch_size = patch_size
        self.vector_schedule = check_vector_schedule(vector_schedule)
        p2 = patch_size**2
        self.sample_size, self.in_channels = sample_size, in_channels
        self.extra_in_channels, self.vector_dim = extra_in_channels, vector_dim
        self.cross_attention_dim = cross_attention_dim
        down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels]
        up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels)]
        self.unet = UNet2DConditionModel(
            sample_size=sample_size // patch_size,
            in_channels=(in_channels + extra_in_channels) * p2,
            out_channels=(out_channels or in_channels) * p2,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            mid_block_type="UNetMidBlock2DCrossAttn" if mid_attention else None,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            cross_attention_dim=cross_attention_dim,
            # diffusers' `attention_head_dim` is the number of heads (a known misnomer)
            attention_head_dim=tuple(c // head_dim for c in block_out_channels),
            norm_num_groups=norm_num_groups,
            class_embed_type="projection" if vector_dim else None,
            projection_class_embeddings_input_dim=vector_dim or None,
            dropout=dropout,
        )
        self.routing, self.routing_state = None, None
        if routing:
            if routing_lambda not in ("learned", "fixed"):
                raise ValueError(
                    f"denoiser.routing_lambda={routing_lambda!r}: expected 'learned' or 'fixed'"
                )
            self.routing = {k: list(v or []) for k, v in dict(routing).items()}
            self.routing_state = route(
                self.unet,
                self.routing,
                routing_form,
                routing_lambda == "learned",
                routing_lambda_init,
            )

    def forward(self, zt: Tensor, t: Tensor, cond: Condition) -> Tensor:
        x = denoiser_input(zt, cond, self.in_channels, self.extra_in_channels)
        vector = None
        if self.vector_dim:  # the control vector, weighed over the noise level
            t_b = t.expand(len(x)) if t.dim() == 0 else t
            vector = cond.vector * vector_schedule(t_b, self.vector_schedule).to(x.dtype)[:, None]
        if self.routing_state is not None:
            self.routing_state.groups = cond.token_groups
        if self.patch_size > 1:
            x = F.pixel_unshuffle(x, self.patch_size)
        out = self.unet(
            x,
            t,
            encoder_hidden_states=cond.tokens,
            encoder_attention_mask=cond.token_mask,
            class_labels=vector,
        ).sample
        return F.pixel_shuffle(out, self.patch_size) if self.patch_size > 1 else out
