"""DiT denoiser (Peebles & Xie 2023) from diffusers' blocks: `denoiser(zt, t, cond) -> prediction`.

The same interface as `facediff.models.unet.UNet`, so every conditioner, loss and sampler works
with it unchanged:

- the latent and the conditioner's spatial maps ("concat" conditions) are patchified together
  (diffusers' `PatchEmbed`, p x p patches) with sin-cos or learned positions;
- the time embedding, plus the conditioner's vector (control metadata) when there is one,
  modulates every block by adaLN-Zero (diffusers' `AdaLayerNormZero`, zero-initialised so each
  block starts as the identity);
- each block attends to the condition tokens by cross-attention with their mask (diffusers'
  `Attention`, so its attention processors apply), between self-attention and the MLP, as
  PixArt-alpha does;
- a final adaLN layer and a zero-initialised linear map each token back to a p x p patch.
"""

from __future__ import annotations

from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import (
    PatchEmbed,
    TimestepEmbedding,
    Timesteps,
    get_2d_sincos_pos_embed,
)
from diffusers.models.normalization import AdaLayerNormZero
from torch import Tensor, nn

from facediff.models.denoiser import (
    Condition,
    check_patch_size,
    check_vector_schedule,
    denoiser_input,
    vector_schedule,
)

POSITIONS = ("sincos", "learned")


class DiTBlock(nn.Module):
    """adaLN-Zero self-attention, cross-attention to the condition tokens, adaLN-Zero MLP."""

    def __init__(
        self, dim: int, heads: int, cross_attention_dim: int, mlp_ratio: float, dropout: float
    ):
        super().__init__()
        self.norm1 = AdaLayerNormZero(dim)  # shift/scale/gate for attention and MLP from emb
        self.attn1 = Attention(dim, heads=heads, dim_head=dim // heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.attn2 = Attention(
            dim,
            cross_attention_dim=cross_attention_dim,
            heads=heads,
            dim_head=dim // heads,
            dropout=dropout,
        )
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(
            dim, mult=mlp_ratio, dropout=dropout, activation_fn="gelu-approximate"
        )

    def forward(self, x: Tensor, emb: Tensor, tokens: Tensor, token_bias: Tensor) -> Tensor:
        h, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, emb=emb)
        x = x + gate_msa[:, None] * self.attn1(h)
        x = x + self.attn2(self.norm2(x), encoder_hidden_states=tokens, attention_mask=token_bias)
        h = self.norm3(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return x + gate_mlp[:, None] * self.ff(h)


class DiT(nn.Module):
    """Args (the UNet's where they mean the same):
    sample_size: latent height/width; in_channels, extra_in_channels, out_channels,
        cross_attention_dim, vector_dim: as for the UNet.
    patch_size: p; the sequence has (sample_size / p)^2 tokens.
    hidden_size, depth, num_heads, mlp_ratio: the transformer (DiT-S: 384, 12, 6, 4;
        DiT-B: 768, 12, 12; DiT-L: 1024, 24, 16).
    positions: "sincos" (fixed 2-D sin-cos) or "learned" (initialised to sin-cos).
    """

    def __init__(
        self,
        sample_size: int,
        in_channels: int,
        extra_in_channels: int = 0,
        out_channels: int | None = None,
        patch_size: int = 2,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        cross_attention_dim: int = 512,
        vector_dim: int = 0,
        positions: str = "sincos",
        dropout: float = 0.0,
        vector_schedule: str = "constant",
    ):
        super().__init__()
        self.vector_schedule = check_vector_schedule(vector_schedule)
        check_patch_size(patch_size, sample_size)
        if hidden_size % num_heads:
            raise ValueError(
                f"denoiser.hidden_size={hidden_size} is not divisible by "
                f"denoiser.num_heads={num_heads}"
            )
        if positions not in POSITIONS:
            raise ValueError(f"denoiser.positions={positions!r}: expected one of {POSITIONS}")
        self.sample_size, self.in_channels = sample_size, in_channels
        self.extra_in_channels, self.vector_dim = extra_in_channels, vector_dim
        self.cross_attention_dim, self.patch_size = cross_attention_dim, patch_size
        self.out_channels = out_channels or in_channels
        grid = sample_size // patch_size
        self.patch_embed = PatchEmbed(
            height=sample_size,
            width=sample_size,
            patch_size=patch_size,
            in_channels=in_channels + extra_in_channels,
            embed_dim=hidden_size,
            interpolation_scale=1,
            pos_embed_type="sincos" if positions == "sincos" else None,
        )
        self.pos = None
        if positions == "learned":
            table = get_2d_sincos_pos_embed(hidden_size, grid, base_size=grid)
            self.pos = nn.Parameter(table.float().unsqueeze(0))
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(256, hidden_size)
        self.vector_embed = (
            TimestepEmbedding(vector_dim, hidden_size) if vector_dim else None
        )  # Linear-SiLU-Linear, as for the time
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, cross_attention_dim, mlp_ratio, dropout)
            for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.out_modulation = nn.Linear(hidden_size, 2 * hidden_size)
        self.proj_out = nn.Linear(hidden_size, patch_size * patch_size * self.out_channels)
        self.initialize()

    def initialize(self) -> None:
        """DiT's initialisation: Xavier linears, the patch projection as a linear, and every
        adaLN modulation and the output layer at zero (each block starts as the identity)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.time_embed.linear_1.weight, std=0.02)
        nn.init.normal_(self.time_embed.linear_2.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.norm1.linear.weight)
            nn.init.zeros_(block.norm1.linear.bias)
        for m in (self.out_modulation, self.proj_out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, zt: Tensor, t: Tensor, cond: Condition) -> Tensor:
        x = denoiser_input(zt, cond, self.in_channels, self.extra_in_channels)
        b, _, h, w = x.shape
        x = self.patch_embed(x)  # (B, N, D), sin-cos positions added unless learned
        if self.pos is not None:
            x = x + self.pos.to(x.dtype)
        t = t.expand(b) if t.dim() == 0 else t
        emb = self.time_embed(self.time_proj(t).to(x.dtype))
        if self.vector_embed is not None:
            weight = vector_schedule(t, self.vector_schedule).to(x.dtype)[:, None]
            emb = emb + weight * self.vector_embed(cond.vector.to(x.dtype))
        # the token mask as an additive bias (B, 1, L), as diffusers' UNet passes it
        bias = (1 - cond.token_mask.to(x.dtype)) * -10000.0
        tokens = cond.tokens.to(x.dtype)
        for block in self.blocks:
            x = block(x, emb, tokens, bias[:, None])
        shift, scale = self.out_modulation(nn.functional.silu(emb)).chunk(2, dim=1)
        x = self.norm_out(x) * (1 + scale[:, None]) + shift[:, None]
        x = self.proj_out(x)  # (B, N, p*p*C)
        p, c = self.patch_size, self.out_channels
        x = x.view(b, h // p, w // p, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, h, w)
