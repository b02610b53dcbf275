"""LatentDiffusion's checks at construction: options in range, named as the config names them,
and the parts wired so that they fit (shapes, widths, routing, guidance scales, the sampler)."""

from __future__ import annotations

import math

from facediff.diffusion.sampling import guidance_levels
from facediff.models.routing import check_routing


def check_options(model, ema_decay: float, ema_power: float) -> None:
    """Finite, in-range rates and decays, named as the config names them."""

    def bad(option, value, valid):
        raise ValueError(f"model.{option}={value!r}: expected {valid}")

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not (number(ema_decay) and 0 <= ema_decay < 1):
        bad("ema_decay", ema_decay, "a number in [0, 1)")
    if not (number(ema_power) and ema_power > 0):
        bad("ema_power", ema_power, "a number > 0")
    for option, value in (
        ("lr_warmup_steps", model.lr_warmup_steps),
        ("max_bad_steps", model.max_bad_steps),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            bad(option, value, "an integer >= 0")
    kw = getattr(model.optimizer_factory, "keywords", {}) or {}
    if "lr" in kw and not (number(kw["lr"]) and kw["lr"] > 0):
        bad("optimizer.lr", kw["lr"], "a finite number > 0")
    if "weight_decay" in kw and not (number(kw["weight_decay"]) and kw["weight_decay"] >= 0):
        bad("optimizer.weight_decay", kw["weight_decay"], "a finite number >= 0")


def check_wiring(model) -> None:
    """Fail before training when the parts do not fit together, naming the options."""
    den, cond, ae = model.denoiser, model.conditioner, model.autoencoder
    latent = ae.latent_size(model.image_size)
    checks = [
        (
            den.sample_size,
            latent,
            "denoiser.sample_size",
            f"the autoencoder's latent size for data.resolution={model.image_size}",
        ),
        (
            den.in_channels,
            ae.latent_channels,
            "denoiser.in_channels",
            "autoencoder latent channels",
        ),
        (
            den.extra_in_channels,
            cond.channels("spatial"),
            "denoiser.extra_in_channels",
            "the conditioner's spatial channels",
        ),
        (
            den.vector_dim,
            cond.channels("vector"),
            "denoiser.vector_dim",
            "the conditioner's vector width",
        ),
        (den.cross_attention_dim, cond.dim, "denoiser.cross_attention_dim", "conditioner.dim"),
    ]
    for got, want, option, what in checks:
        if got != want:
            raise ValueError(f"{option}={got} does not match {what} ({want})")
    if getattr(den, "routing", None):
        check_routing(den.routing, cond.token_names)
    try:  # guidance scales may only name conditions the model has
        guidance_levels(cond.names, model.sampler.guidance_scale)
    except ValueError as e:
        raise ValueError(f"sampler.guidance_scale: {e}") from None
    model.check_sampler(model.sampler)
