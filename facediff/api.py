"""Notebook API: load a checkpoint and sample faces for attributes and masks.

from facediff import load_model
gen = load_model("outputs/train/.../checkpoints/last.ckpt")
images = gen.sample(attributes={"Smiling": 1, "Eyeglasses": 1}, num_samples=4, seed=0)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facediff import checkpoint, editing
from facediff.conditions import label_map, same_as, values_batch
from facediff.data.labels import mask_vocabulary
from facediff.lit.diffusion import LatentDiffusion
from facediff.lit.diffusion import model_from_checkpoint as build_model
from facediff.precision import resolve_device
from facediff.provenance import LOADED
from facediff.visualize import to_numpy_images

log = logging.getLogger(__name__)
Mask = np.ndarray | torch.Tensor | str | Path  # a label map, or a PNG file of one


def load_checkpoint(path) -> dict:
    """A facediff-train checkpoint, verified (CRC of every record) and loaded without running
    code (`facediff.checkpoint.load`). One written before its run reached trainer.max_steps
    (stopped by a signal or an error) is read, with a warning saying so."""
    path = Path(path).expanduser()
    ckpt = checkpoint.load(path, "a facediff-train checkpoint")
    written_by = checkpoint.run_record(ckpt, path).code
    if written_by and written_by != LOADED:  # results may differ where the code changed
        log.warning(
            "%s: written by facediff %s, read by facediff %s (recorded as ckpt_code in "
            "metrics.json)",
            path,
            written_by,
            LOADED,
        )
    step, max_steps = training_progress(ckpt)
    if max_steps and step < max_steps:
        log.warning(
            "%s: written at step %d of trainer.max_steps=%d: its run stopped before the end "
            "(resume it with facediff-train ckpt_path=%s)",
            path,
            step,
            max_steps,
            path,
        )
    return ckpt


def training_progress(ckpt: dict) -> tuple[int, int | None]:
    """(the step a checkpoint was written at, its run's trainer.max_steps; None where the run
    was not bounded by steps)."""
    return int(ckpt.get("global_step", 0)), checkpoint.run_record(ckpt).max_steps


def model_from_checkpoint(
    ckpt: dict, use_ema: bool = True, path=None, allow_targets=()
) -> LatentDiffusion:
    """Rebuild the LatentDiffusion of a checkpoint and load its (EMA) weights
    (`facediff.lit.diffusion.model_from_checkpoint`: only facediff's model classes are built
    from its recorded config; `allow_targets` adds classes of your own that you trust)."""
    return build_model(ckpt, use_ema, path, allow_targets)


def datamodule_for(model: LatentDiffusion, verify_hash: bool = True):
    """The FaceDataModule of the prepared data a checkpoint was trained on (same attributes)."""
    from facediff.data.datamodule import FaceDataModule

    info = model.data_info
    return FaceDataModule(
        info["root"], info["resolution"], attributes=info["attr_names"], verify_hash=verify_hash
    )


class FaceGenerator:
    """A trained model ready to sample; conditions given as Python values."""

    def __init__(self, model: LatentDiffusion):
        self.model = model
        self.attr_names: list[str] = model.data_info["attr_names"]

    @classmethod
    def from_checkpoint(
        cls, path, device: str = "auto", use_ema: bool = True, allow_targets=()
    ) -> FaceGenerator:
        """`device`: auto (CUDA where there is one), cpu, cuda, cuda:N. `allow_targets`:
        classes of your own that the checkpoint's config may build (`model_from_checkpoint`)."""
        model = model_from_checkpoint(load_checkpoint(path), use_ema, path, allow_targets)
        return cls(model.to(resolve_device(device)))

    @property
    def conditions(self) -> list[str]:
        return self.model.conditioner.names

    def batch(
        self,
        attributes: dict[str, int] | None = None,
        mask: Mask | None = None,
        num_samples: int = 1,
        resize_mask: bool = False,
        control: dict | None = None,
    ) -> dict:
        """The batch dict for one condition repeated `num_samples` times
        (`facediff.conditions.values_batch`).

        Args:
            attributes: {name: value}: 1 or True present; 0, -1 (CelebA's notation) or False
                absent; None, or a name not given, unknown.
            mask: label map (H, W) of the model's data's classes (0..18 for faces) as an array,
                tensor or PNG path, at the model's resolution (or any size with
                `resize_mask=True`: nearest neighbour).
            control: control metadata {name: value} (`facediff.data.CONTROL_NAMES`, e.g.
                {"flip": 1}) over the median of the model's training data.
        """
        return values_batch(
            self.attr_names,
            self.model.image_size,
            attributes,
            mask,
            num_samples,
            resize_mask,
            control,
            self.model.data_info.get("control_default"),
            len(mask_vocabulary(self.model.data_info.get("mask_classes"))),
        )

    def _same_noise_run(self, mask, seed, num_inference_steps, num_steps, guidance_scale):
        """generate(batch, **extra) with every sample from the same noise (editing), the
        guidance scale given or the model's, the mask dropped where none is given."""
        num_steps = same_as("num_inference_steps", num_inference_steps, "num_steps", num_steps)
        kw = {"num_steps": num_steps, "seed": seed, "shared_noise": True}
        kw["guidance_scale"] = (
            self.model.sampler.guidance_scale if guidance_scale is None else guidance_scale
        )
        dropped = {"mask": mask is None, "control": False}

        def run(batch, **extra):
            batch = {k: v.to(self.model.device) for k, v in batch.items()}
            return to_numpy_images(self.model.generate(batch, drop=dropped, **kw, **extra))

        return run

    @torch.no_grad()
    def swap(
        self,
        mask,
        mask_b,
        parts,
        attributes: dict | None = None,
        seed: int = 0,
        num_inference_steps: int | None = None,
        guidance_scale=None,
        resize_mask: bool = False,
        num_steps: int | None = None,
    ) -> dict:
        """The mask classes `parts` of `mask_b` put into `mask`, sampled from the same noise as
        `mask` itself (facediff.editing.swap_parts) -> {"original", "swapped": uint8 (H, W, 3),
        "mask": the swapped label map}."""
        run = self._same_noise_run(mask, seed, num_inference_steps, num_steps, guidance_scale)
        res = self.model.image_size
        a = label_map(mask, res, resize_mask)
        swapped = editing.swap_parts(a, label_map(mask_b, res, resize_mask), parts)
        batch = self.batch(attributes, a, 2, resize_mask)
        batch["mask"][1] = swapped
        images = run(batch)
        return {"original": images[0], "swapped": images[1], "mask": swapped.numpy()}

    @torch.no_grad()
    def toggle(
        self,
        names: list[str] | None = None,
        attributes: dict | None = None,
        mask=None,
        region=None,
        seed: int = 0,
        num_inference_steps: int | None = None,
        guidance_scale=None,
        resize_mask: bool = False,
        num_steps: int | None = None,
    ) -> dict:
        """Each attribute of `names` (default: all) off and on from `attributes`, from the same
        noise; with `region` (mask classes), changed inside those classes only (the unedited
        run recorded and blended back outside them at every step) -> {"images" uint8
        (len(names), 2, H, W, 3): columns off / on, "attributes"}."""
        names = list(names or self.attr_names)
        unknown = [n for n in names if n not in self.attr_names]
        if unknown:
            raise ValueError(
                f"toggle: unknown attribute(s) {unknown}; the model knows {self.attr_names}"
            )
        run = self._same_noise_run(mask, seed, num_inference_steps, num_steps, guidance_scale)
        batch = self.batch(attributes, mask, 2 * len(names), resize_mask)
        for i, name in enumerate(names):
            k = self.attr_names.index(name)
            batch["attrs"][2 * i : 2 * i + 2, k] = torch.tensor([0.0, 1.0])
            batch["attrs_known"][2 * i : 2 * i + 2, k] = True
        extra = {}
        if region is not None:
            if mask is None:
                raise ValueError("toggle(region=...): a region needs a mask")
            hook = editing.RecordAndBlend()
            run(self.batch(attributes, mask, 1, resize_mask), step_callback=hook.record)
            h = self.model.autoencoder.latent_size(self.model.image_size)
            hook.region = editing.region_map(batch["mask"], region, (h, h))
            hook.path = [z.expand(len(batch["attrs"]), -1, -1, -1) for z in hook.path]
            extra["step_callback"] = hook.blend
        images = run(batch, **extra)
        return {"images": images.reshape(len(names), 2, *images.shape[1:]), "attributes": names}

    @torch.no_grad()
    def interpolate(
        self,
        attributes: dict | None,
        attributes_b: dict | None,
        alphas=(0.0, 0.25, 0.5, 0.75, 1.0),
        mask=None,
        seed: int = 0,
        num_inference_steps: int | None = None,
        guidance_scale=None,
        resize_mask: bool = False,
        num_steps: int | None = None,
    ) -> dict:
        """From `attributes` to `attributes_b` at `alphas` (their condition embeddings mixed,
        facediff.editing.Interpolated), from the same noise -> {"images", "alphas"}."""
        alphas = torch.as_tensor([float(x) for x in alphas])
        if not len(alphas) or not ((alphas >= 0) & (alphas <= 1)).all():
            raise ValueError(f"alphas={alphas.tolist()}: expected numbers in [0, 1]")
        run = self._same_noise_run(mask, seed, num_inference_steps, num_steps, guidance_scale)
        n = len(alphas)
        batch_b = {
            k: v.to(self.model.device)
            for k, v in self.batch(attributes_b, mask, n, resize_mask).items()
        }
        mixed = editing.Interpolated(self.model.conditioner, batch_b, alphas)
        images = run(self.batch(attributes, mask, n, resize_mask), conditioner=mixed)
        return {"images": images, "alphas": alphas.tolist()}

    def to(self, device=None, dtype: torch.dtype | None = None) -> FaceGenerator:
        """Move the model (a device, a dtype, or both), as a diffusers pipeline's `.to`."""
        self.model.to(device=device, dtype=dtype)
        return self

    @torch.no_grad()
    def sample(
        self,
        attributes: dict[str, int] | None = None,
        mask: Mask | None = None,
        num_images: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale=None,
        eta: float | None = None,
        seed: int = 0,
        batch: dict | None = None,
        resize_mask: bool = False,
        control: dict | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "np",
        num_samples: int | None = None,
        num_steps: int | None = None,
        num_images_per_prompt: int | None = None,
        progress: bool = False,
    ):
        """Generate `num_images` faces for one condition. A condition not given is dropped (its
        null embedding), so e.g. attributes alone sample a mask-free face for them; `control`
        sets control metadata ({"flip": 1}) for a model trained with it.

        The names are the exported pipeline's (diffusers'): `num_inference_steps`,
        `guidance_scale`, `generator` (a CPU torch.Generator; else one seeded with `seed`),
        `output_type` ("np": uint8 (N, H, W, 3), the default; "pil": a list of PIL images;
        "pt": float (N, 3, H, W) in [-1, 1]). `num_samples` and `num_images_per_prompt` are
        other names of `num_images`, `num_steps` of `num_inference_steps`. `progress`: a bar
        over the sampler's steps."""
        if output_type not in ("np", "pil", "pt"):
            raise ValueError(f"output_type={output_type!r}: expected 'np', 'pil' or 'pt'")
        n = same_as("num_images", num_images, "num_samples", num_samples)
        n = same_as("num_images", n, "num_images_per_prompt", num_images_per_prompt)
        steps = same_as("num_inference_steps", num_inference_steps, "num_steps", num_steps)
        if batch is None:
            batch = self.batch(attributes, mask, 1 if n is None else n, resize_mask, control)
            dropped = {"attrs": attributes is None, "mask": mask is None, "control": False}
        else:
            dropped = {}
        gs = self.model.sampler.guidance_scale if guidance_scale is None else guidance_scale
        device = self.model.device
        batch = {k: v.to(device) for k, v in batch.items()}
        images = self.model.generate(
            batch,
            seed=seed,
            num_steps=steps,
            eta=eta,
            guidance_scale=gs,
            drop=dropped,
            generator=generator,
            progress=progress,
        )
        if output_type == "pt":
            return images
        out = to_numpy_images(images)
        return [Image.fromarray(x) for x in out] if output_type == "pil" else out
