"""facediff-prepare: a raw data set (or SynthFaces) to the prepared, memory-mapped format."""

from __future__ import annotations

import json
import logging

import hydra
from omegaconf import DictConfig

from facediff.config import instantiate, register_resolvers, validate

log = logging.getLogger("facediff.prepare")


def prepare(cfg: DictConfig) -> dict | None:
    register_resolvers()
    validate(cfg)
    datamodule = instantiate(cfg.data, prepare_workers=cfg.workers)
    report = datamodule.prepare_data(force=cfg.force)
    datamodule.setup()  # reads it back: format, hash, attribute names
    if report is None:
        meta = datamodule.data.meta  # what setup read: not meta.json a second time
        origin = meta.get("origin") or {
            "source": meta.get("source"),
            "raw_dir": meta.get("raw_dir"),
        }
        log.info(
            "%s already holds a prepared data set, prepared from %s (force=true to redo it)",
            datamodule.root,
            origin,
        )
    else:
        print(json.dumps(report, indent=1))
        print(
            f"prepared {report['kept']} items at {datamodule.resolution} px in {datamodule.root}"
        )
    if cfg.evaluators:  # ahead of a sweep or a multi-node job: trained once, here
        from facediff.evaluation.evaluator_cache import evaluators_dir, protocol_evaluators

        e = cfg.evaluation
        protocol_evaluators(datamodule, e)
        print(f"evaluators ready in {evaluators_dir(datamodule, e.evaluators_dir)}")
    return report


@hydra.main(version_base="1.3", config_path="pkg://facediff.conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    prepare(cfg)


if __name__ == "__main__":
    main()
