"""facediff-train: train a composed config (facediff.api.train), resume with ckpt_path=."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from facediff.api import train
from facediff.lit.training import Interrupted

log = logging.getLogger("facediff.train")


@hydra.main(version_base="1.3", config_path="pkg://facediff.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except Interrupted as e:  # the whole job (a sweep too) stops, with 128 + the signal number
        log.error("%s", e)
        sys.exit(e.exit_code)
    return metrics.get("val/loss")


__all__ = ["main", "train"]

if __name__ == "__main__":
    main()
