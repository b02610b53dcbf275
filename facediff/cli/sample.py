"""facediff-sample: faces from a checkpoint for given attributes, a mask or validation items."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from facediff.api import FaceGenerator
from facediff.config import register_resolvers
from facediff.diffusion.solvers import sampler_option
from facediff.visualize import colorize, grid, save_png, to_numpy_images

log = logging.getLogger("facediff.sample")


def sample(cfg: DictConfig) -> Path:
    register_resolvers()
    gen = FaceGenerator.from_checkpoint(
        cfg.ckpt_path, cfg.device, cfg.use_ema, list(cfg.get("allow_targets") or [])
    )
    if cfg.get("sampler"):  # sampler=<conf/sampler option>: composed into the config
        gen.model.sampler = sampler_option(cfg.sampler, like=gen.model.sampler)
    out = Path(cfg.output_dir)
    k = cfg.num_samples
    gs = (
        OmegaConf.to_container(cfg.guidance_scale)
        if OmegaConf.is_config(cfg.guidance_scale)
        else cfg.guidance_scale
    )
    kwargs = {"num_steps": cfg.num_steps, "eta": cfg.eta, "guidance_scale": gs, "seed": cfg.seed}
    rows = []
    mode = cfg.get("mode") or "sample"
    if mode != "sample":
        return edit(cfg, gen, mode, gs, out)
    if cfg.from_split:
        from facediff.api import datamodule_for
        from facediff.data.batch import condition_batch, repeat_batch
        from facediff.evaluation.generated import write_generated

        dm = datamodule_for(gen.model)  # the content hash checked, as in training
        cond = condition_batch(dm, cfg.from_split, cfg.num_conditions, gen.model)
        per_image = repeat_batch({key: v for key, v in cond.items() if key != "image"}, k)
        per_image["sample"] = torch.arange(k).repeat(len(cond["image"]))
        images = gen.sample(batch=per_image, progress=True, **kwargs)
        # the samples with their conditions: facediff-evaluate images_dir=<output_dir> scores them
        meta = {
            "data_root": str(dm.root),
            "split": cfg.from_split,
            "resolution": dm.resolution,
            "attr_names": gen.attr_names,
            "ckpt_path": str(cfg.ckpt_path),
        } | {key: v for key, v in kwargs.items()}
        write_generated(out, torch.from_numpy(images).permute(0, 3, 1, 2), per_image, meta)
        real = to_numpy_images(cond["image"])
        for i in range(len(real)):
            head = [real[i]] + ([colorize(cond["mask"][i])] if "mask" in cond else [])
            rows.append(head + list(images[i * k : (i + 1) * k]))
    else:
        attrs = OmegaConf.to_container(cfg.attributes) if cfg.attributes else None
        images = gen.sample(
            attributes=attrs, mask=cfg.mask, num_samples=k, progress=True, **kwargs
        )
        rows.append(list(images))
        for i, img in enumerate(images):
            save_png(img, out / "samples" / f"{i:05d}.png")
    path = save_png(grid(rows), out / "grid.png", cfg.upscale)
    (out / "sample_config.json").write_text(
        json.dumps(OmegaConf.to_container(cfg, resolve=True), indent=1)
    )
    log.info("wrote %d samples and %s", len(images), path)
    return path


def edit(cfg: DictConfig, gen: FaceGenerator, mode: str, gs, out: Path) -> Path:
    """facediff-sample mode=swap|attributes|interpolate: one grid of same-noise edits."""

    def plain(x):
        return OmegaConf.to_container(x) if OmegaConf.is_config(x) else x

    common = {"seed": cfg.seed, "num_steps": cfg.num_steps, "guidance_scale": gs}
    attributes = plain(cfg.attributes)
    if mode == "swap":
        if cfg.mask is None or cfg.get("mask_b") is None or cfg.get("parts") is None:
            raise ValueError("facediff-sample mode=swap: give mask=, mask_b= and parts=")
        result = gen.swap(cfg.mask, cfg.mask_b, plain(cfg.parts), attributes, **common)
    elif mode == "attributes":
        names, region = plain(cfg.get("toggle")), plain(cfg.get("region"))
        result = gen.toggle(names, attributes, cfg.mask, region, **common)
    elif mode == "interpolate":
        alphas = plain(cfg.get("alphas"))
        kw = common | ({"alphas": alphas} if alphas is not None else {})
        result = gen.interpolate(attributes, plain(cfg.get("attributes_b")), mask=cfg.mask, **kw)
    else:
        raise ValueError(f"mode={mode!r}: expected 'swap', 'attributes' or 'interpolate'")
    if mode == "swap":
        rows = [[result["original"], result["swapped"], colorize(torch.as_tensor(result["mask"]))]]
    elif mode == "attributes":
        rows = [list(pair) for pair in result["images"]]  # a row per attribute: off, on
    else:
        rows = [list(result["images"])]
    path = save_png(grid(rows), out / "grid.png", cfg.upscale)
    meta = {k: v for k, v in result.items() if k in ("attributes", "alphas")}
    (out / "sample_config.json").write_text(
        json.dumps(OmegaConf.to_container(cfg, resolve=True) | meta, indent=1)
    )
    log.info("wrote the %s edit grid %s", mode, path)
    return path


@hydra.main(version_base="1.3", config_path="pkg://facediff.conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    sample(cfg)


if __name__ == "__main__":
    main()
