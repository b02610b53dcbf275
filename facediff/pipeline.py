"""facediff as a diffusers `DiffusionPipeline`.

`facediff-export` (`facediff.export`) saves a trained model with `save_pretrained` and ships this
file, and the model files it imports, in the folder, so that

    pipe = DiffusionPipeline.from_pretrained(DIR, trust_remote_code=True)
    images = pipe(attributes={"Smiling": 1}, mask=label_map, num_images=4, seed=0).images

runs in a process that has no facediff installed: diffusers copies the shipped files into its
modules cache and imports them there, which is code execution the user opts into with
`trust_remote_code=True` (without it diffusers refuses, naming the file). The weights are
safetensors; nothing is unpickled.

Sampling is `facediff.diffusion.sampling.Sampler`, the same loop as `facediff-sample`, so the
same seed gives the same images. The scheduler is a component like any diffusers scheduler:
`pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)` switches
solvers.

Only the classes named in `BUILDABLE` can be built from a component's config: a config names
them, it never names code to import.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import ConfigMixin, DiffusionPipeline, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from PIL import Image

from facediff.conditions import same_as, values_batch
from facediff.data.labels import MASK_CLASSES
from facediff.diffusion.sampling import Sampler
from facediff.models.conditioning import (
    AttributeEncoder,
    Conditioner,
    ControlEncoder,
    MaskConcatEncoder,
    MaskResNetEncoder,
    NullConditioner,
    SegFormerMaskEncoder,
)
from facediff.models.dit import DiT
from facediff.models.unet import UNet
from facediff.visualize import to_numpy_images

BUILDABLE = {
    cls.__name__: cls
    for cls in (
        AttributeEncoder,
        Conditioner,
        ControlEncoder,
        MaskConcatEncoder,
        MaskResNetEncoder,
        NullConditioner,
        SegFormerMaskEncoder,
        DiT,
        UNet,
    )
}


def build(spec, where: str = "spec"):
    """Instantiate a Hydra-style spec ({"_target_": "...ClassName", **kwargs}, nested) from the
    classes of `BUILDABLE` only; any other target is an error naming it."""
    if isinstance(spec, dict):
        if "_target_" not in spec:
            return {k: build(v, f"{where}.{k}") for k, v in spec.items()}
        name = str(spec["_target_"]).rsplit(".", 1)[-1]
        if name not in BUILDABLE:
            raise ValueError(
                f"{where}._target_={spec['_target_']!r}: not a facediff model class "
                f"(expected one of {sorted(BUILDABLE)})"
            )
        kwargs = {k: build(v, f"{where}.{k}") for k, v in spec.items() if not k.startswith("_")}
        return BUILDABLE[name](**kwargs)
    if isinstance(spec, list):
        return [build(v, f"{where}[{i}]") for i, v in enumerate(spec)]
    return spec


class FaceDiffDenoiser(ModelMixin, ConfigMixin):
    """A facediff denoiser (UNet or DiT) as a diffusers model: `forward(zt, t, cond)`."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, spec: dict):
        super().__init__()
        self.model = build(spec, "denoiser")

    def forward(self, zt, t, cond):
        return self.model(zt, t, cond)


class FaceDiffConditioner(ModelMixin, ConfigMixin):
    """A facediff Conditioner as a diffusers model: `forward(batch, drop, spatial_size)`."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, spec: dict):
        super().__init__()
        self.model = build(spec, "conditioner")

    @property
    def names(self) -> list[str]:
        return self.model.names

    @property
    def requires(self) -> set[str]:
        return self.model.requires

    def forward(self, batch, drop=None, spatial_size=None):
        return self.model(batch, drop=drop, spatial_size=spatial_size)


@dataclass
class FaceDiffPipelineOutput(BaseOutput):
    images: list[Image.Image] | np.ndarray


class FaceDiffPipeline(DiffusionPipeline):
    """Faces for attributes and a mask, with per-condition classifier-free guidance.

    Components: `denoiser`, `conditioner`, `scheduler` (the solver; built from the training
    noise schedule), `vae` (None in pixel space). Config: the attribute names and mask classes
    the model was trained with, the image size, the latent shape, the VAE's scaling factor and
    the trained model's sampler settings (steps, eta, guidance scales, x0 clipping).
    """

    model_cpu_offload_seq = "conditioner->denoiser->vae"
    _optional_components = ["vae"]

    def __init__(
        self,
        denoiser: FaceDiffDenoiser,
        conditioner: FaceDiffConditioner,
        scheduler,
        vae,
        attribute_names: list[str] | None = None,
        mask_classes: list[str] | None = None,
        image_size: int = 32,
        latent_channels: int = 3,
        latent_size: int = 32,
        scaling_factor: float = 1.0,
        sampler: dict | None = None,
    ):
        super().__init__()
        self.register_modules(
            denoiser=denoiser, conditioner=conditioner, scheduler=scheduler, vae=vae
        )
        self.register_to_config(
            attribute_names=list(attribute_names or []),
            mask_classes=list(mask_classes or MASK_CLASSES),
            image_size=image_size,
            latent_channels=latent_channels,
            latent_size=latent_size,
            scaling_factor=scaling_factor,
            sampler=dict(sampler or {}),
        )

    def sampler(self) -> Sampler:
        """facediff's Sampler over this pipeline's scheduler class and sampler settings."""
        s = self.config.sampler
        return Sampler(
            type(self.scheduler),
            num_steps=s.get("num_steps", 50),
            eta=s.get("eta", 0.0),
            guidance_scale=s.get("guidance_scale", 1.0),
            clip_sample=s.get("clip_sample"),
            scheduler_options=s.get("scheduler_options"),
        )

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return latents
        return self.vae.decode(latents / self.config.scaling_factor).sample.clamp(-1, 1)

    @torch.no_grad()
    def __call__(
        self,
        attributes: dict | None = None,
        mask=None,
        num_images: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale=None,
        eta: float | None = None,
        seed: int = 0,
        resize_mask: bool = False,
        output_type: str = "pil",
        return_dict: bool = True,
        generator: torch.Generator | None = None,
        num_images_per_prompt: int | None = None,
    ):
        """Generate `num_images` faces for one condition.

        Args:
            attributes: {name: 1 / 0 / -1 / None} (`pipe.config.attribute_names`); None drops
                the attribute condition (its null embedding).
            mask: (H, W) label map of `pipe.config.mask_classes` indices (array, tensor or PNG
                path); None drops the mask condition.
            guidance_scale: one scale or {condition: scale}; None: the trained model's.
            seed: the noise (torch.Generator on the CPU), as `facediff-sample seed=`;
                `generator`: a CPU torch.Generator of your own instead.
            num_images_per_prompt: diffusers' name for `num_images`.
            output_type: "pil", "np" (uint8 N, H, W, 3) or "pt" (float N, 3, H, W in [-1, 1]).
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type={output_type!r}: expected 'pil', 'np' or 'pt'")
        num_images = same_as(
            "num_images", num_images, "num_images_per_prompt", num_images_per_prompt
        )
        num_images = 1 if num_images is None else num_images
        cfg = self.config
        batch = values_batch(
            list(cfg.attribute_names), cfg.image_size, attributes, mask, num_images, resize_mask
        )
        device = self.denoiser.device
        batch = {k: v.to(device) for k, v in batch.items()}
        drop = {"attrs": attributes is None, "mask": mask is None, "control": False}
        sampler = self.sampler()
        shape = (num_images, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
        gs = sampler.guidance_scale if guidance_scale is None else guidance_scale
        z0 = sampler(
            self.denoiser,
            self.conditioner,
            batch,
            shape,
            self.scheduler.config,
            generator=generator or torch.Generator().manual_seed(seed),
            num_steps=num_inference_steps,
            eta=eta,
            guidance_scale=gs,
            drop=drop,
            pixel_space=self.vae is None,
        )
        images = self.decode(z0.to(self.denoiser.dtype)).float().clamp(-1, 1)
        if output_type == "pt":
            out = images
        else:
            out = to_numpy_images(images)
            if output_type == "pil":
                out = [Image.fromarray(x) for x in out]
        return FaceDiffPipelineOutput(images=out) if return_dict else (out,)
