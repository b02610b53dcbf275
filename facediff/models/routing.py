"""Stage routing of conditions (MCLD: docs/references.md): which conditions each UNet stage's
cross-attention sees, as diffusers attention processors on the UNet's `attn2` layers.

`routing = {down: [attrs], mid: [attrs, mask], up: [mask]}` names, per stage (the down blocks,
the middle block, the up blocks), the token conditions its cross-attentions attend to. Two forms:

- "concat" (MCLD's public code): one cross-attention per layer over the concatenated tokens of
  the conditions the stage receives; the others are not in its keys at all.
- "sum" (the paper): one attention per condition, the outputs summed with weights lambda
  (learned, or fixed at `lambda_init`). The first condition uses the layer's own key/value
  projections, each further one its own (initialised from them), as IP-Adapter's decoupled
  cross-attention does; the query and the output projection are shared.

A condition routed away from a stage gets no gradient through it (it is not in that stage's
keys); a token condition routed nowhere is an error (`check_routing`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STAGES = ("down", "mid", "up")
FORMS = ("concat", "sum")


def stage_of(processor_name: str) -> str:
    """'down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor' -> 'down'."""
    return {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}[
        processor_name.split(".")[0]
    ]


def check_routing(routing: dict, token_conditions: list[str]) -> None:
    """Every stage named is a stage, every condition a token condition of the conditioner, and
    every token condition reaches at least one stage; errors name the option."""
    unknown = [s for s in routing if s not in STAGES]
    if unknown:
        raise ValueError(f"denoiser.routing: unknown stage(s) {unknown}; stages are {STAGES}")
    for stage, names in routing.items():
        bad = [n for n in names if n not in token_conditions]
        if bad:
            raise ValueError(
                f"denoiser.routing.{stage}: {bad} is not a token condition of the conditioner "
                f"(its token conditions: {token_conditions})"
            )
    for name in token_conditions:
        if not any(name in names for names in routing.values()):
            raise ValueError(
                f"denoiser.routing: condition {name!r} is routed to no stage; give it at least "
                f"one of {STAGES} (routing: {dict(routing)})"
            )


class RoutingState:
    """What the UNet's forward tells its processors: the token range of each condition."""

    groups: dict[str, tuple[int, int]] | None = None


def _heads(x: Tensor, heads: int) -> Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


class RoutedCrossAttnProcessor(nn.Module):
    """The processor of one cross-attention layer (`attn2`) of a routed stage."""

    def __init__(
        self,
        attn,
        names: list[str],
        state: RoutingState,
        form: str = "concat",
        learn_lambda: bool = True,
        lambda_init: float = 1.0,
    ):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"denoiser.routing_form={form!r}: expected one of {FORMS}")
        self.names, self.form, self.state = list(names), form, state
        if form == "sum":
            # extra key/value projections for every condition after the first
            self.to_k = nn.ModuleList(copy.deepcopy(attn.to_k) for _ in self.names[1:])
            self.to_v = nn.ModuleList(copy.deepcopy(attn.to_v) for _ in self.names[1:])
            lam = torch.full((len(self.names),), float(lambda_init))
            if learn_lambda:
                self.lambdas = nn.Parameter(lam)
            else:
                self.register_buffer("lambdas", lam)

    def _tokens(self, states: Tensor, bias: Tensor | None, names: list[str]):
        groups = self.state.groups
        if groups is None:
            raise RuntimeError("routed UNet called without the conditions' token groups")
        idx = torch.cat([torch.arange(*groups[n], device=states.device) for n in names])
        return states[:, idx], None if bias is None else bias[..., idx]

    def _attend(self, attn, q: Tensor, kv: Tensor, bias: Tensor | None, to_k, to_v) -> Tensor:
        k, v = _heads(to_k(kv), attn.heads), _heads(to_v(kv), attn.heads)
        mask = None if bias is None else bias.view(bias.shape[0], 1, 1, -1).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(1, 2).flatten(2)

    def forward(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs
    ) -> Tensor:
        if encoder_hidden_states is None or hidden_states.dim() != 3:
            raise RuntimeError("RoutedCrossAttnProcessor serves cross-attention on tokens only")
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        q = _heads(attn.to_q(hidden_states), attn.heads)
        if self.form == "concat":
            kv, bias = self._tokens(encoder_hidden_states, attention_mask, self.names)
            out = self._attend(attn, q, kv, bias, attn.to_k, attn.to_v)
        else:
            out = 0
            projections = [(attn.to_k, attn.to_v), *zip(self.to_k, self.to_v)]
            for i, (name, (to_k, to_v)) in enumerate(zip(self.names, projections)):
                kv, bias = self._tokens(encoder_hidden_states, attention_mask, [name])
                out = out + self.lambdas[i] * self._attend(attn, q, kv, bias, to_k, to_v)
        out = attn.to_out[1](attn.to_out[0](out.to(hidden_states.dtype)))
        return out / attn.rescale_output_factor


def route(unet, routing: dict, form: str, learn_lambda: bool, lambda_init: float) -> RoutingState:
    """Put routed processors on every cross-attention of a diffusers UNet2DConditionModel."""
    unknown = [s for s in routing if s not in STAGES]
    if unknown:
        raise ValueError(f"denoiser.routing: unknown stage(s) {unknown}; stages are {STAGES}")
    with_attention = {stage_of(n) for n in unet.attn_processors if ".attn2." in n}
    for stage in STAGES:
        names = list(routing.get(stage) or [])
        if names and stage not in with_attention:
            raise ValueError(
                f"denoiser.routing.{stage}={names}: the {stage} stage has no cross-attention "
                "(denoiser.attention_levels / mid_attention); route them elsewhere"
            )
        if stage in with_attention and not names:
            raise ValueError(
                f"denoiser.routing.{stage}: the {stage} stage has cross-attention, so it needs "
                "at least one condition (or turn its attention off)"
            )
    state = RoutingState()
    processors = {}
    for name, processor in unet.attn_processors.items():
        if ".attn2." in name:
            names = list(routing[stage_of(name)])
            processor = RoutedCrossAttnProcessor(
                unet.get_submodule(name.removesuffix(".processor")),
                names,
                state,
                form,
                learn_lambda,
                lambda_init,
            )
        processors[name] = processor
    unet.set_attn_processor(processors)
    return state
