"""facediff-export: a checkpoint as a diffusers pipeline folder (`facediff.export`)."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from facediff.export import export

log = logging.getLogger("facediff.export")


@hydra.main(version_base="1.3", config_path="pkg://facediff.conf", config_name="export")
def main(cfg: DictConfig) -> None:
    out = export(cfg.ckpt_path, cfg.out, use_ema=cfg.use_ema, overwrite=cfg.overwrite)
    log.info("wrote the diffusers pipeline %s", out)
    print(f"DiffusionPipeline.from_pretrained({str(out)!r}, trust_remote_code=True)")


if __name__ == "__main__":
    main()
