"""facediff-evaluate: the pinned evaluation protocol (conf/evaluation) on a checkpoint's samples
(ckpt_path=) or on a folder of images generated elsewhere with their conditions (images_dir=)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from facediff import checkpoint
from facediff.config import register_resolvers
from facediff.precision import resolve_device

log = logging.getLogger("facediff.evaluate")


def evaluate(cfg: DictConfig) -> dict:
    """Returns the report (rows, extractors, protocol); writes metrics.json and report.md."""
    from facediff.api import (
        datamodule_for,
        load_checkpoint,
        model_from_checkpoint,
        training_progress,
    )
    from facediff.data.datamodule import FaceDataModule
    from facediff.evaluation.evaluator_cache import protocol_evaluators
    from facediff.evaluation.generated import META
    from facediff.evaluation.protocol import (
        check_protocol,
        evaluate_variants,
        protocol_variants,
        score_generated,
    )
    from facediff.evaluation.tables import log_table_to_loggers, write_report
    from facediff.lit.wandb import logger_for_checkpoint

    register_resolvers()
    protocol = OmegaConf.to_container(cfg.evaluation, resolve=True)
    out = Path(cfg.output_dir)
    if bool(cfg.ckpt_path) == bool(cfg.images_dir):
        raise ValueError("facediff-evaluate: give exactly one of ckpt_path=PATH or images_dir=DIR")
    if cfg.ckpt_path:
        protocols = protocol_variants(protocol)  # all checked before the checkpoint is read
        ckpt = load_checkpoint(cfg.ckpt_path)
        model = model_from_checkpoint(
            ckpt, False, cfg.ckpt_path, list(cfg.get("allow_targets") or [])
        )
        model = model.to(resolve_device(cfg.device))
        dm, data = datamodule_for(model), {}
        step, max_steps = training_progress(ckpt)  # a row of its own in facediff-report
        extra = {
            "ckpt_path": str(cfg.ckpt_path),
            "ckpt_step": step,
            "ckpt_max_steps": max_steps,
            "ckpt_code": checkpoint.run_record(ckpt).code,  # the code that trained it
        }
        wandb = logger_for_checkpoint(ckpt, out)  # the table goes to the training's W&B run
        try:
            for name, options, report, table, folder in evaluate_variants(
                model, dm, protocols, out, extra=extra
            ):  # evaluation.variants: each in <output_dir>/<name>
                data[name] = json.loads((folder / "metrics.json").read_text())
                _print(report, table, folder, f"evaluation {name} ({options})" if name else "")
                if wandb is not None:
                    log_table_to_loggers([wandb], report["rows"], step, name)
        finally:
            if wandb is not None:
                import wandb as wb

                wb.finish()
        return data if protocols[0][0] else data[None]
    else:
        images_dir = Path(cfg.images_dir)
        meta_path = images_dir / META
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        root = cfg.data_root or meta.get("data_root")
        if not root or not Path(root).is_dir():
            raise FileNotFoundError(
                f"images_dir={images_dir}: the prepared data {root!r} (data_root=, or "
                f"data_root in {meta_path}) is not a folder"
            )
        if not isinstance(meta.get("resolution"), int):
            raise ValueError(f"{meta_path}: 'resolution' (the images' size in pixels) is missing")
        dm = FaceDataModule(str(root), meta["resolution"], attributes=meta.get("attr_names"))
        check_protocol(protocol)  # before the evaluators are trained
        for key in ("flip_check", "variants"):
            if protocol.get(key):
                raise ValueError(
                    f"evaluation.{key}={protocol[key]}: samples from a model; give ckpt_path=, "
                    "not images_dir="
                )
        protocol.pop("variants", None)
        parser, classifier = protocol_evaluators(dm, protocol)
        report = score_generated(
            images_dir, dm, parser, classifier, protocol, resolve_device(cfg.device)
        )
        table = write_report(report, out, {"protocol": protocol, "images_dir": str(images_dir)})
        _print(report, table, out)
        return json.loads((out / "metrics.json").read_text())


def _print(report: dict, table: str, folder: Path, title: str = "") -> None:
    from facediff.evaluation.flip import flip_lines

    print((title + ":\n" if title else "") + table)
    for k, v in report["extractors"].items():
        print(f"  {k}: {v}")
    if "flip" in report:
        print(flip_lines(report["flip"]), end="")
    log.info("wrote %s and %s", Path(folder) / "metrics.json", Path(folder) / "report.md")


@hydra.main(version_base="1.3", config_path="pkg://facediff.conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    torch.set_float32_matmul_precision("high")
    evaluate(cfg)


if __name__ == "__main__":
    main()
