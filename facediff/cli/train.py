"""facediff-train: train a composed config (facediff.api.train), resume with ckpt_path=."""

from __future__ import annotations

import logging
import sys

import hydra
import torch
from omegaconf import DictConfig

from facediff.api import train
from facediff.config import group_overrides
from facediff.lit.training import Interrupted

log = logging.getLogger("facediff.train")
ROW = "samples vs own conditions"


def sweep_value(metrics: dict, name: str) -> float:
    """The value a sweeper optimises (`sweep_metric`): a logged metric (val/loss) or a column
    of the evaluation's "samples vs own conditions" row (report/attr_acc, report/miou, ...;
    report/<variant>/<column> where evaluation.variants are set)."""
    if name.startswith("report/"):
        rows = metrics.get("report")
        if rows is None:
            raise ValueError(
                f"sweep_metric={name!r} needs the evaluation: set evaluate_after=true"
            )
        key, prefix = name.removeprefix("report/"), "report/"
        if ROW not in rows:  # {variant: rows}
            variant, _, key = key.partition("/")
            if variant not in rows:
                raise ValueError(
                    f"sweep_metric={name!r}: the evaluation has variants "
                    f"{list(rows)}; name one, as report/<variant>/<column>"
                )
            rows, prefix = rows[variant], f"report/{variant}/"
        own = rows[ROW]
        if key not in own or not isinstance(own[key], (int, float)):
            valid = [f"{prefix}{k}" for k, v in own.items() if isinstance(v, (int, float))]
            raise ValueError(f"sweep_metric={name!r}: not in the evaluation; one of {valid}")
        return float(own[key])
    if name not in metrics:
        valid = [k for k, v in metrics.items() if isinstance(v, (int, float))]
        raise ValueError(f"sweep_metric={name!r}: not logged by this run; one of {valid}")
    return float(metrics[name])


@hydra.main(version_base="1.3", config_path="pkg://facediff.conf", config_name="train")
def _main(cfg: DictConfig) -> float | None:
    if cfg.get("threads"):  # one thread per job where sweep jobs run side by side
        torch.set_num_threads(int(cfg.threads))
    try:
        metrics = train(cfg)
    except Interrupted as e:  # the whole job (a sweep too) stops, with 128 + the signal number
        log.error("%s", e)
        sys.exit(e.exit_code)
    if not cfg.get("sweep_metric") or cfg.trainer.get("fast_dev_run"):
        return metrics.get("val/loss")  # None where no validation ran
    return sweep_value(metrics, cfg.sweep_metric)


def main() -> None:
    """facediff-train: the Hydra main, `+launcher=`/`+study=`/`+search=` read as the groups
    they now are (`facediff.config.group_overrides`)."""
    sys.argv = [sys.argv[0], *group_overrides(sys.argv[1:])]
    _main()


__all__ = ["main", "train"]

if __name__ == "__main__":
    main()
