"""Solvers by name: the conf/sampler options applied to a trained model."""

from __future__ import annotations

from facediff.config import compose, instantiate
from facediff.diffusion.sampling import Sampler


def sampler_option(name, like: Sampler | None = None) -> Sampler:
    """The Sampler of conf/sampler/<name>.yaml (or of its config, composed already), keeping
    `like`'s guidance scale (a trained model's): how facediff-sample and facediff-evaluate
    switch samplers on a checkpoint."""
    if isinstance(name, str):
        try:
            cfg = compose("train", [f"sampler={name}"]).sampler
        except Exception as e:  # noqa: BLE001 - Hydra's "Could not find 'sampler/...'"
            raise ValueError(f"sampler={name!r}: not an option of conf/sampler ({e})") from None
    else:
        cfg = name
    sampler = instantiate(cfg)
    if like is not None:
        sampler.guidance_scale = like.guidance_scale
    return sampler
