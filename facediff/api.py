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

from facediff.config import instantiate, register_resolvers
from facediff.data.labels import NUM_MASK_CLASSES
from facediff.lit.diffusion import LatentDiffusion


def load_checkpoint(path) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
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
        self, attributes: dict[str, int] | None = None, mask=None, num_samples: int = 1
    ) -> dict:
        """The batch dict for one condition repeated `num_samples` times.

        Args:
            attributes: {name: 1 or 0 (or -1)}; names not given are "unknown".
            mask: label map (H, W) of ints 0..18 as an array, tensor or PNG path.
        """
        n, a = num_samples, len(self.attr_names)
        attrs, known = torch.zeros(n, a), torch.zeros(n, a, dtype=torch.bool)
        for name, value in (attributes or {}).items():
            if name not in self.attr_names:
                raise ValueError(
                    f"attributes: unknown name {name!r}; the model knows {self.attr_names}"
                )
            k = self.attr_names.index(name)
            attrs[:, k], known[:, k] = float(value > 0), True
        res = self.model.image_size
        batch = {"attrs": attrs, "attrs_known": known, "control": torch.zeros(n, 7)}
        batch["control"][:, 3:5] = 1.0  # full crop box, as prepared data has
        if mask is not None:
            if isinstance(mask, (str, Path)):
                mask = np.asarray(Image.open(mask))
            m = torch.as_tensor(np.asarray(mask)).long()
            if m.dim() != 2 or m.min() < 0 or m.max() >= NUM_MASK_CLASSES:
                raise ValueError(f"mask: expected a (H, W) label map of 0..{NUM_MASK_CLASSES - 1}")
            if m.shape != (res, res):
                m = torch.as_tensor(
                    np.asarray(
                        Image.fromarray(m.numpy().astype(np.uint8)).resize(
                            (res, res), Image.NEAREST
                        )
                    )
                ).long()
            batch["mask"] = m.expand(n, -1, -1).clone()
        else:
            batch["mask"] = torch.zeros(n, res, res, dtype=torch.long)
        return batch

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
    ) -> np.ndarray:
        """Generate faces; returns uint8 (N, H, W, 3). A condition not given is dropped (its
        null embedding), so e.g. attributes alone sample a mask-free face for them."""
        from facediff.visualize import to_uint8

        if batch is None:
            batch = self.batch(attributes, mask, num_samples)
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
