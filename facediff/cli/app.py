"""facediff-app: the interactive page for a checkpoint (`facediff.app`)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="pkg://facediff.conf", config_name="app")
def main(cfg: DictConfig) -> None:
    from facediff.app import launch

    launch(cfg)


if __name__ == "__main__":
    main()
