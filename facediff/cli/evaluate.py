"""facediff-evaluate: score a checkpoint's samples with a pinned, written-down protocol."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from facediff.api import datamodule_for, load_checkpoint, model_from_checkpoint
from facediff.config import register_resolvers

log = logging.getLogger("facediff.evaluate")


def evaluate(cfg: DictConfig) -> dict:
    from facediff.evaluation.metrics import feature_distances
    from facediff.evaluation.report import evaluators, fidelity_report, write_report

    register_resolvers()
    model = model_from_checkpoint(load_checkpoint(cfg.ckpt_path), use_ema=False).to(cfg.device)
    info = model.data_info
    dm = datamodule_for(model)
    ev_dir = cfg.evaluators_dir or f"{info['root']}-evaluators"
    parser, classifier = evaluators(dm, ev_dir, cfg.parser_steps, cfg.classifier_steps)
    sampler_kwargs = {
        "num_steps": cfg.num_steps,
        "eta": cfg.eta,
        "guidance_scale": OmegaConf.to_container(cfg.guidance_scale)
        if OmegaConf.is_config(cfg.guidance_scale)
        else cfg.guidance_scale,
    }
    report = fidelity_report(
        model,
        dm,
        parser,
        classifier,
        cfg.num_conditions,
        cfg.seed,
        cfg.batch_size,
        cfg.split,
        sampler_kwargs,
        use_ema=cfg.use_ema,
    )
    real = report.pop("real_images")
    distances = feature_distances(real, report["images"], classifier, cfg.kid_subset_size)
    report["rows"]["samples vs own conditions"].update(distances)
    sampler = model.sampler
    protocol = OmegaConf.to_container(cfg, resolve=True) | {
        "sampler": sampler.scheduler_cls.__name__,
        "num_steps_used": cfg.num_steps or sampler.num_steps,
        "eta_used": sampler.eta if cfg.eta is None else cfg.eta,
        "guidance_used": sampler.guidance_scale
        if cfg.guidance_scale is None
        else sampler_kwargs["guidance_scale"],
        "resize": "none: samples and references at the training resolution",
        "feature_extractor": "facediff attribute classifier, penultimate features (domain FID/KID); "
        "no Inception weights are available offline",
        "diversity": "not computed (no LPIPS backbone offline)",
    }
    table = write_report(report, cfg.output_dir, {"protocol": protocol})
    print(table)
    log.info("wrote %s", Path(cfg.output_dir) / "metrics.json")
    return report["rows"]


@hydra.main(version_base="1.3", config_path="pkg://facediff.conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    torch.set_float32_matmul_precision("high")
    evaluate(cfg)


if __name__ == "__main__":
    main()
