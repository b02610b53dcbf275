"""Condition encoders and the multi-condition conditioner (plain nn.Modules).

Every encoder turns part of the batch into one kind of condition and owns a learned null
embedding and a dropout rate for classifier-free guidance:

- tokens  (B, L, D): cross-attention (attributes, pooled or spatial mask tokens)
- spatial (B, C, h, w): concatenated to the denoiser input (latent-diffusion's "concat")
- vector  (B, Dv): added to the time embedding (control metadata, kept apart from semantics)

`Conditioner(batch, drop=...)` runs them all and returns a `Condition`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import ResNetConfig, ResNetModel, SegformerConfig, SegformerModel

from facediff.data.labels import NUM_MASK_CLASSES
from facediff.models.denoiser import KINDS, Condition


class ConditionEncoder(nn.Module):
    """Base class: `encode(batch, spatial_size)` -> one kind of condition; `null` replaces it
    where the condition is dropped. `requires` lists the batch keys it reads."""

    kind: str = "tokens"
    requires: tuple[str, ...] = ()

    def __init__(self, dropout: float = 0.1):
        super().__init__()
        if not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        self.dropout = dropout

    def encode(self, batch: dict, spatial_size) -> Tensor:
        raise NotImplementedError

    def null(self, batch_size: int, spatial_size) -> Tensor:
        raise NotImplementedError

    def forward(self, batch: dict, drop: Tensor, spatial_size=None) -> Tensor:
        """`drop`: bool (B,), True where the null embedding replaces the condition."""
        b = drop.shape[0]
        null = self.null(b, spatial_size)
        if bool(drop.all()):
            return null
        out = self.encode(batch, spatial_size)
        keep = ~drop.view(-1, *([1] * (out.dim() - 1)))
        return torch.where(keep, out, null.to(out.dtype))


class NullConditioner(ConditionEncoder):
    """No condition: one learned token (the denoiser's cross-attention still has a key)."""

    def __init__(self, dim: int):
        super().__init__(dropout=0.0)
        self.token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)

    def null(self, batch_size, spatial_size):
        return self.token.expand(batch_size, -1, -1)

    def encode(self, batch, spatial_size):
        return self.null(len(next(iter(batch.values()))), spatial_size)


class AttributeEncoder(ConditionEncoder):
    """Attributes -> tokens. Each attribute is -1 (absent), 0 (unknown) or +1 (present).

    `per_attribute_tokens=False`: an MLP maps the vector to one token (the CVIU paper's `a`).
    `per_attribute_tokens=True`: token k = name embedding k + value embedding (A tokens).
    The learned null token(s) differ from "all attributes negative".
    """

    requires = ("attrs", "attrs_known")

    def __init__(
        self,
        num_attributes: int,
        dim: int,
        hidden: int = 512,
        per_attribute_tokens: bool = False,
        dropout: float = 0.1,
    ):
        super().__init__(dropout)
        self.num_attributes, self.per_attribute_tokens = num_attributes, per_attribute_tokens
        if per_attribute_tokens:
            self.names = nn.Parameter(torch.randn(num_attributes, dim) * 0.02)
            self.values = nn.Embedding(3, dim)
            self.null_tokens = nn.Parameter(torch.randn(num_attributes, dim) * 0.02)
        else:
            self.mlp = nn.Sequential(
                nn.Linear(num_attributes, hidden), nn.SiLU(), nn.Linear(hidden, dim)
            )
            self.null_tokens = nn.Parameter(torch.randn(1, dim) * 0.02)

    def signed(self, batch) -> Tensor:
        attrs = batch["attrs"]
        if attrs.shape[-1] != self.num_attributes:
            raise ValueError(
                f"conditioner: the attribute encoder expects {self.num_attributes} attributes, "
                f"the batch has {attrs.shape[-1]} (data.attributes)"
            )
        return (attrs * 2 - 1) * batch["attrs_known"].to(attrs.dtype)  # (B, A) in {-1, 0, 1}

    def encode(self, batch, spatial_size):
        v = self.signed(batch)
        if self.per_attribute_tokens:
            return self.names + self.values((v + 1).long())  # (B, A, D)
        return self.mlp(v).unsqueeze(1)  # (B, 1, D)

    def null(self, batch_size, spatial_size):
        return self.null_tokens.expand(batch_size, -1, -1)


def one_hot_mask(mask: Tensor, num_classes: int = NUM_MASK_CLASSES) -> Tensor:
    """int64 (B, H, W) -> float (B, num_classes, H, W)."""
    if mask.min() < 0 or mask.max() >= num_classes:
        raise ValueError(f"mask labels must be in 0..{num_classes - 1}, got {mask.max().item()}")
    return F.one_hot(mask, num_classes).permute(0, 3, 1, 2).float()


class MaskResNetEncoder(ConditionEncoder):
    """One-hot mask -> ResNet (ResNet-18 with the defaults, trained from scratch) -> tokens.

    `pooled=True`: global average pooling, 1 token (the CVIU paper's `m`).
    `pooled=False`: the feature map pooled to `grid` x `grid`, grid^2 tokens with learned
    positions (`m_np`; 8x8 for 256 px masks).
    """

    requires = ("mask",)

    def __init__(
        self,
        dim: int,
        pooled: bool = False,
        grid: int = 8,
        widths: tuple[int, ...] = (64, 128, 256, 512),
        depths: tuple[int, ...] = (2, 2, 2, 2),
        num_classes: int = NUM_MASK_CLASSES,
        dropout: float = 0.1,
    ):
        super().__init__(dropout)
        config = ResNetConfig(
            num_channels=num_classes,
            embedding_size=widths[0],
            hidden_sizes=list(widths),
            depths=list(depths),
            layer_type="basic",
            downsample_in_first_stage=False,
        )
        self.resnet = ResNetModel(config)
        self.pooled, self.grid, self.num_classes = pooled, grid, num_classes
        n = 1 if pooled else grid * grid
        self.proj = nn.Linear(widths[-1], dim)
        self.pos = nn.Parameter(torch.zeros(1, n, dim)) if not pooled else None
        self.null_tokens = nn.Parameter(torch.randn(1, n, dim) * 0.02)

    def encode(self, batch, spatial_size):
        feats = self.resnet(one_hot_mask(batch["mask"], self.num_classes)).last_hidden_state
        if self.pooled:
            return self.proj(feats.mean((2, 3))).unsqueeze(1)  # (B, 1, D)
        feats = F.adaptive_avg_pool2d(feats, self.grid).flatten(2).transpose(1, 2)
        return self.proj(feats) + self.pos  # (B, grid^2, D)

    def null(self, batch_size, spatial_size):
        return self.null_tokens.expand(batch_size, -1, -1)


class SegFormerMaskEncoder(ConditionEncoder):
    """One-hot mask -> SegFormer encoder (transformers) -> spatial tokens, never pooled (its
    public use pooled them and lost the layout). `pretrained`: a local folder or hub name of a
    SegformerModel whose first layer takes `num_classes` channels; None: random init.
    `sr_ratios`: attention reduction per stage; (8, 4, 2, 1) suits 256 px masks, use ones for
    masks of 64 px or less (a stage's feature map must be at least its ratio wide). `config`: a
    SegformerConfig as a dict, which overrides the sizes (facediff-export writes the pretrained
    model's there, so the exported encoder rebuilds without the pretrained folder)."""

    requires = ("mask",)

    def __init__(
        self,
        dim: int,
        grid: int = 8,
        hidden_sizes: tuple[int, ...] = (32, 64, 160, 256),
        sr_ratios: tuple[int, ...] = (8, 4, 2, 1),
        pretrained: str | None = None,
        num_classes: int = NUM_MASK_CLASSES,
        dropout: float = 0.1,
        config: dict | None = None,
    ):
        super().__init__(dropout)
        if config is not None:
            self.segformer = SegformerModel(SegformerConfig.from_dict(config))
        elif pretrained:
            from facediff.models.pretrained import from_pretrained

            self.segformer = from_pretrained(SegformerModel, pretrained, "conditioner.pretrained")
        else:
            config = SegformerConfig(
                num_channels=num_classes,
                hidden_sizes=list(hidden_sizes),
                num_attention_heads=[1, 2, 5, 8][: len(hidden_sizes)],
                num_encoder_blocks=len(hidden_sizes),
                sr_ratios=list(sr_ratios)[: len(hidden_sizes)],
            )
            self.segformer = SegformerModel(config)
        self.grid, self.num_classes = grid, num_classes
        self.proj = nn.Linear(self.segformer.config.hidden_sizes[-1], dim)
        self.pos = nn.Parameter(torch.zeros(1, grid * grid, dim))
        self.null_tokens = nn.Parameter(torch.randn(1, grid * grid, dim) * 0.02)

    def encode(self, batch, spatial_size):
        feats = self.segformer(one_hot_mask(batch["mask"], self.num_classes)).last_hidden_state
        feats = F.adaptive_avg_pool2d(feats, self.grid).flatten(2).transpose(1, 2)
        return self.proj(feats) + self.pos  # (B, grid^2, D)

    def null(self, batch_size, spatial_size):
        return self.null_tokens.expand(batch_size, -1, -1)


class MaskConcatEncoder(ConditionEncoder):
    """Mask -> spatial map at the latent size, concatenated to the denoiser input.

    `channels=None`: the one-hot mask, area-resized (class fractions per latent pixel);
    otherwise a learned embedding of each class with `channels` channels, area-resized.
    """

    kind = "spatial"
    requires = ("mask",)

    def __init__(
        self,
        channels: int | None = None,
        num_classes: int = NUM_MASK_CLASSES,
        dropout: float = 0.1,
    ):
        super().__init__(dropout)
        self.num_classes = num_classes
        self.channels = channels or num_classes
        self.embed = nn.Conv2d(num_classes, channels, 1, bias=False) if channels else None
        self.null_map = nn.Parameter(torch.zeros(1, self.channels, 1, 1))

    def encode(self, batch, spatial_size):
        x = one_hot_mask(batch["mask"], self.num_classes)
        if self.embed is not None:
            x = self.embed(x)
        if tuple(x.shape[-2:]) != tuple(spatial_size):
            x = F.interpolate(x, size=tuple(spatial_size), mode="area")
        return x  # (B, C, h, w)

    def null(self, batch_size, spatial_size):
        return self.null_map.expand(batch_size, -1, *spatial_size)


class ControlEncoder(ConditionEncoder):
    """Control metadata (flip, crop box, source size) -> a vector added to the time embedding,
    apart from the semantic conditions (arXiv 2411.03177), with its own dropout and guidance
    scale; the denoiser weighs it by `vector_schedule` over the noise level."""

    kind = "vector"
    requires = ("control",)

    def __init__(self, num_controls: int = 7, dim: int = 128, dropout: float = 0.1):
        super().__init__(dropout)
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(num_controls, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.null_vector = nn.Parameter(torch.zeros(1, dim))

    def encode(self, batch, spatial_size):
        return self.mlp(batch["control"])  # (B, Dv)

    def null(self, batch_size, spatial_size):
        return self.null_vector.expand(batch_size, -1)


class Conditioner(nn.Module):
    """Runs named condition encoders and assembles a `Condition`.

    Tokens of all token encoders are concatenated along the sequence axis (the CVIU paper's
    `mc` is attributes + spatial mask tokens); spatial maps along channels; vectors likewise.
    The encoder order is the guidance order (see `facediff.diffusion.sampling`).

    Args:
        encoders: name -> encoder, e.g. {"attrs": AttributeEncoder, "mask": MaskConcatEncoder};
            empty for an unconditional model (a learned null token is all the denoiser sees).
        dim: token width (the denoiser's cross-attention width).
    """

    def __init__(self, encoders: dict[str, ConditionEncoder] | None, dim: int):
        super().__init__()
        self.encoders = nn.ModuleDict(encoders or {})
        self.dim = dim
        if not any(e.kind == "tokens" for e in self.encoders.values()):
            self.encoders["_null"] = NullConditioner(dim)  # cross-attention needs a key

    @property
    def names(self) -> list[str]:
        """The conditions a user can guide (the null token is not one)."""
        return [n for n, e in self.encoders.items() if not isinstance(e, NullConditioner)]

    @property
    def requires(self) -> set[str]:
        return {k for e in self.encoders.values() for k in e.requires}

    @property
    def token_names(self) -> list[str]:
        """The guidable conditions that are tokens (what stage routing routes)."""
        return [n for n in self.names if self.encoders[n].kind == "tokens"]

    def channels(self, kind: str) -> int:
        """Total width of one kind: tokens -> D, spatial -> Cs, vector -> Dv (0 if none)."""
        if kind == "spatial":
            return sum(e.channels for e in self.encoders.values() if e.kind == "spatial")
        if kind == "vector":
            return sum(e.dim for e in self.encoders.values() if e.kind == "vector")
        return self.dim

    def sample_drop(self, batch_size: int, generator=None, device=None) -> dict[str, Tensor]:
        """Per-sample training dropout, each condition with its own rate."""
        return {
            n: (torch.rand(batch_size, generator=generator) < e.dropout).to(device)
            for n, e in self.encoders.items()
        }

    def forward(
        self, batch: dict, drop: dict[str, Tensor | bool] | None = None, spatial_size=None
    ) -> Condition:
        b = len(batch[next(iter(batch))])
        device = next(self.parameters()).device
        out: dict[str, list[Tensor]] = {k: [] for k in KINDS}
        groups, start = {}, 0
        for name, enc in self.encoders.items():
            d = (drop or {}).get(name, False)
            if not torch.is_tensor(d):
                d = torch.full((b,), bool(d), device=device)
            out[enc.kind].append(enc(batch, d.to(device), spatial_size))
            if enc.kind == "tokens":
                groups[name] = (start, start + out["tokens"][-1].shape[1])
                start = groups[name][1]
        tokens = torch.cat(out["tokens"], 1)  # (B, L, D)
        if tokens.shape[-1] != self.dim:
            raise ValueError(
                f"conditioner: token width {tokens.shape[-1]} != conditioner.dim {self.dim}"
            )
        return Condition(
            tokens=tokens,
            token_mask=torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device),
            vector=torch.cat(out["vector"], 1) if out["vector"] else None,
            spatial=torch.cat(out["spatial"], 1) if out["spatial"] else None,
            token_groups=groups,
        )
