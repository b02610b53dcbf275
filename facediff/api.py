"""Notebook API: load a checkpoint and sample faces for attributes and masks.

from facediff import load_model
gen = load_model("outputs/train/.../checkpoints/last.ckpt")
images = gen.sample(attributes={"Smiling": 1, "Eyeglasses": 1}, num_samples=4, seed=0)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from facediff import checkpoint
from facediff.config import instantiate, register_resolvers
from facediff.data.labels import NUM_MASK_CLASSES
from facediff.lit.diffusion import LatentDiffusion


def load_checkpoint(path) -> dict:
    """A facediff-train checkpoint, verified (CRC of every record) and loaded without running
    code (`facediff.checkpoint.load`)."""
    path = Path(path).expanduser()
    ckpt = checkpoint.load(path, "a facediff-train checkpoint")
    if not (ckpt.get("facediff") or {}).get("config"):
        raise ValueError(f"{path}: not a facediff-train checkpoint (no 'facediff' config in it)")
    return ckpt


def model_from_checkpoint(ckpt: dict, use_ema: bool = True) -> LatentDiffusion:
    """Rebuild the LatentDiffusion of a checkpoint and load its (EMA) weights."""
    register_resolvers()
    cfg = OmegaConf.create(ckpt["facediff"]["config"])
    model: LatentDiffusion = instantiate(cfg.model)
    model.load_state_dict(ckpt["state_dict"])
    model.on_load_checkpoint(ckpt)
    model.data_info, model.build_config = ckpt["facediff"]["data"], ckpt["facediff"]["config"]
    if use_ema:
        model.ema.copy_to(model.trainable_parameters())
    return model.eval()


def train(cfg, datamodule=None) -> dict:
    """Train a composed config (`facediff.config.compose("train", [...])`), then, with
    `evaluate_after=true`, run the evaluation protocol on the final model; returns the final
    metrics (and the report's rows under "report"). facediff-train is this function."""
    from facediff.lit.training import finish_wandb, fit

    evaluate = bool(cfg.get("evaluate_after")) and not cfg.trainer.get("fast_dev_run")
    result = fit(cfg, datamodule, keep_wandb_open=evaluate)
    metrics = result.metrics
    if evaluate:
        from facediff.evaluation.report import evaluate_after

        ok = False
        try:  # the table goes to the run's own W&B run, which then ends
            metrics["report"] = evaluate_after(
                cfg, result.model, result.datamodule, result.trainer
            )
            ok = True
        finally:
            finish_wandb(result.trainer, ok)
    return metrics


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
    def from_checkpoint(cls, path, device: str = "cpu", use_ema: bool = True) -> FaceGenerator:
        return cls(model_from_checkpoint(load_checkpoint(path), use_ema).to(device))

    @property
    def conditions(self) -> list[str]:
        return self.model.conditioner.names

    def batch(
        self,
        attributes: dict[str, int] | None = None,
        mask=None,
        num_samples: int = 1,
        resize_mask: bool = False,
    ) -> dict:
        """The batch dict for one condition repeated `num_samples` times.

        Args:
            attributes: {name: value}: 1 or True present; 0, -1 (CelebA's notation) or False
                absent; None, or a name not given, unknown.
            mask: label map (H, W) of integers 0..18 as an array, tensor or PNG path, at the
                model's resolution (or any size with `resize_mask=True`: nearest neighbour).
        """
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples={num_samples!r}: expected an integer >= 1")
        n, a = num_samples, len(self.attr_names)
        attrs, known = torch.zeros(n, a), torch.zeros(n, a, dtype=torch.bool)
        for name, value in (attributes or {}).items():
            if name not in self.attr_names:
                raise ValueError(
                    f"attributes: unknown name {name!r}; the model knows {self.attr_names}"
                )
            if value is None:  # unknown, as if not given
                continue
            if not isinstance(value, (bool, int, float)) or value not in (-1, 0, 1):
                raise ValueError(
                    f"attributes[{name!r}]={value!r}: expected 1 or True (present), 0, -1 or "
                    "False (absent), or None (unknown)"
                )
            k = self.attr_names.index(name)
            attrs[:, k], known[:, k] = float(value > 0), True
        res = self.model.image_size
        batch = {"attrs": attrs, "attrs_known": known, "control": torch.zeros(n, 7)}
        batch["control"][:, 3:5] = 1.0  # full crop box, as prepared data has
        if mask is not None:
            m = self._mask(mask, res, resize_mask)
            batch["mask"] = m.expand(n, -1, -1).clone()
        else:
            batch["mask"] = torch.zeros(n, res, res, dtype=torch.long)
        return batch

    @staticmethod
    def _mask(mask, res: int, resize: bool) -> torch.Tensor:
        where = f"mask={mask}" if isinstance(mask, (str, Path)) else "mask"
        if isinstance(mask, (str, Path)):
            try:
                with Image.open(mask) as im:
                    mask = np.asarray(im)
            except (OSError, ValueError) as e:
                raise ValueError(f"{where}: not a readable PNG label map ({e})") from None
        m = torch.as_tensor(np.asarray(mask))
        if m.dim() != 2:
            raise ValueError(f"{where}: expected a (H, W) label map, got shape {tuple(m.shape)}")
        if m.dtype.is_floating_point:
            if not torch.isfinite(m).all() or not torch.equal(m, m.round()):
                raise ValueError(f"{where}: labels must be integers 0..{NUM_MASK_CLASSES - 1}")
        elif m.dtype == torch.bool:
            raise ValueError(f"{where}: a boolean array, expected integer labels")
        if m.min() < 0 or m.max() >= NUM_MASK_CLASSES:
            raise ValueError(
                f"{where}: labels {int(m.min())}..{int(m.max())}, expected 0..{NUM_MASK_CLASSES - 1}"
            )
        m = m.long()
        if m.shape != (res, res):
            if not resize:
                raise ValueError(
                    f"{where}: {m.shape[0]}x{m.shape[1]}, the model is {res}x{res}; pass a mask "
                    "of that size, or resize_mask=True to resize it (nearest neighbour)"
                )
            img = Image.fromarray(m.numpy().astype(np.uint8)).resize((res, res), Image.NEAREST)
            m = torch.as_tensor(np.asarray(img)).long()
        return m

    @torch.no_grad()
    def edit(
        self,
        mode: str,
        attributes: dict | None = None,
        mask=None,
        mask_b=None,
        parts=None,
        toggle: list[str] | None = None,
        region=None,
        attributes_b: dict | None = None,
        alphas=(0.0, 0.25, 0.5, 0.75, 1.0),
        seed: int = 0,
        num_steps: int | None = None,
        guidance_scale=None,
        resize_mask: bool = False,
    ) -> dict:
        """Same-noise edits (facediff.editing); images are uint8 (N, H, W, 3).

        mode="swap": `parts` of `mask_b` put into `mask` -> {"original", "swapped", "mask"}.
        mode="attributes": each attribute of `toggle` (default: all) off and on from
            `attributes`, inside the mask classes `region` only if given -> {"images"
            (len(toggle), 2, H, W, 3): columns off / on, "attributes"}.
        mode="interpolate": `attributes` -> `attributes_b` at `alphas` -> {"images", "alphas"}.
        A deterministic solver (DDIM eta 0, the default) keeps the runs comparable.
        """
        from facediff import editing
        from facediff.visualize import to_uint8

        kw = {"num_steps": num_steps, "seed": seed, "shared_noise": True}
        kw["guidance_scale"] = (
            self.model.sampler.guidance_scale if guidance_scale is None else guidance_scale
        )
        dropped = {"mask": mask is None, "control": False}

        def run(batch, **extra):
            batch = {k: v.to(self.model.device) for k, v in batch.items()}
            return self.model.generate(batch, drop=dropped, **kw, **extra)

        if mode == "swap":
            if mask is None or mask_b is None or parts is None:
                raise ValueError("edit(mode='swap'): give mask, mask_b and parts")
            res = self.model.image_size
            a = self._mask(mask, res, resize_mask)
            b = self._mask(mask_b, res, resize_mask)
            swapped = editing.swap_parts(a, b, parts)
            batch = self.batch(attributes, a, 2, resize_mask)
            batch["mask"][1] = swapped
            images = to_uint8(run(batch))
            return {"original": images[0], "swapped": images[1], "mask": swapped.numpy()}
        if mode == "attributes":
            names = list(toggle or self.attr_names)
            unknown = [n for n in names if n not in self.attr_names]
            if unknown:
                raise ValueError(
                    f"toggle: unknown attribute(s) {unknown}; the model knows {self.attr_names}"
                )
            batch = self.batch(attributes, mask, 2 * len(names), resize_mask)
            for i, name in enumerate(names):
                k = self.attr_names.index(name)
                batch["attrs"][2 * i : 2 * i + 2, k] = torch.tensor([0.0, 1.0])
                batch["attrs_known"][2 * i : 2 * i + 2, k] = True
            extra = {}
            if region is not None:
                if mask is None:
                    raise ValueError("edit(mode='attributes', region=...): a region needs a mask")
                hook = editing.RecordAndBlend()
                base = self.batch(attributes, mask, 1, resize_mask)
                run(base, step_callback=hook.record)  # the unedited run, recorded
                h = self.model.autoencoder.latent_size(self.model.image_size)
                hook.region = editing.region_map(batch["mask"], region, (h, h))
                hook.path = [z.expand(len(batch["attrs"]), -1, -1, -1) for z in hook.path]
                extra["step_callback"] = hook.blend
            images = to_uint8(run(batch, **extra))
            return {
                "images": images.reshape(len(names), 2, *images.shape[1:]),
                "attributes": names,
            }
        if mode == "interpolate":
            alphas = torch.as_tensor([float(x) for x in alphas])
            if not len(alphas) or not ((alphas >= 0) & (alphas <= 1)).all():
                raise ValueError(f"alphas={alphas.tolist()}: expected numbers in [0, 1]")
            n = len(alphas)
            batch_a = self.batch(attributes, mask, n, resize_mask)
            batch_b = {
                k: v.to(self.model.device)
                for k, v in self.batch(attributes_b, mask, n, resize_mask).items()
            }
            mixed = editing.Interpolated(self.model.conditioner, batch_b, alphas)
            images = to_uint8(run(batch_a, conditioner=mixed))
            return {"images": images, "alphas": alphas.tolist()}
        raise ValueError(f"mode={mode!r}: expected 'swap', 'attributes' or 'interpolate'")

    @torch.no_grad()
    def sample(
        self,
        attributes: dict[str, int] | None = None,
        mask=None,
        num_samples: int = 1,
        num_steps: int | None = None,
        guidance_scale=None,
        eta: float | None = None,
        seed: int = 0,
        batch: dict | None = None,
        resize_mask: bool = False,
    ) -> np.ndarray:
        """Generate faces; returns uint8 (N, H, W, 3). A condition not given is dropped (its
        null embedding), so e.g. attributes alone sample a mask-free face for them."""
        from facediff.visualize import to_uint8

        if batch is None:
            batch = self.batch(attributes, mask, num_samples, resize_mask)
            dropped = {"attrs": attributes is None, "mask": mask is None, "control": False}
        else:
            dropped = {}
        gs = self.model.sampler.guidance_scale if guidance_scale is None else guidance_scale
        device = self.model.device
        batch = {k: v.to(device) for k, v in batch.items()}
        images = self.model.generate(
            batch, seed=seed, num_steps=num_steps, eta=eta, guidance_scale=gs, drop=dropped
        )
        return to_uint8(images)
