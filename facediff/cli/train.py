"""facediff-train: train a composed config, then (evaluate_after=true) evaluate it.

`train(cfg)` is the whole job, for notebooks and tests too: the evaluators it needs are trained
before fit on global rank 0, `facediff.lit.training.fit` trains the model, and the evaluation
protocol runs on global rank 0 alone. Resume with ckpt_path=.
"""

from __future__ import annotations

import logging
import sys

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from facediff.config import group_overrides
from facediff.evaluation.evaluator_cache import RECIPE, protocol_evaluators
from facediff.evaluation.protocol import evaluate_after, protocol_variants
from facediff.evaluation.tables import OWN
from facediff.lit.callbacks import Interrupted
from facediff.lit.training import fit
from facediff.lit.wandb import finish_wandb

log = logging.getLogger("facediff.train")


def train(cfg: DictConfig, datamodule=None) -> dict:
    """Train a composed config (`facediff.config.compose("train", [...])`), then, with
    `evaluate_after=true`, run the evaluation protocol on the final model; returns the final
    metrics (and the evaluation's rows under "report"). facediff-train is this function."""
    evaluate = bool(cfg.get("evaluate_after")) and not cfg.trainer.get("fast_dev_run")
    if evaluate:  # a bad evaluation option fails now, not after the training
        protocol_variants(OmegaConf.to_container(cfg.evaluation, resolve=True))
    result = fit(
        cfg, datamodule, keep_wandb_open=evaluate, before_fit=evaluators_for(cfg, evaluate)
    )
    metrics = result.metrics
    if evaluate and result.trainer.is_global_zero:  # once per job, not once per rank
        ok = False
        try:  # the table goes to the run's own W&B run, which then ends
            metrics["report"] = evaluate_after(
                cfg, result.model, result.datamodule, result.trainer
            )
            ok = True
        finally:
            finish_wandb(result.trainer, ok)
    return metrics


def evaluators_for(cfg: DictConfig, evaluate: bool):
    """What trains the evaluators a training run needs (its fidelity/* monitor's and its
    evaluation's), before fit and on global rank 0 only; None when it needs none."""
    if not str(cfg.model.get("_target_", "")).endswith("LatentDiffusion"):
        return None  # an evaluator's own training
    wanted = []  # the protocols' evaluator options (RECIPE), each set once
    fidelity = (cfg.get("callbacks") or {}).get("fidelity")
    if fidelity and fidelity.get("every_n_steps"):
        wanted.append(fidelity)
    if evaluate:
        wanted.append(cfg.evaluation)
    if not wanted:
        return None
    recipes = dict.fromkeys(tuple(p.get(k) for k in RECIPE) for p in wanted)

    def ensure(datamodule) -> None:
        for recipe in recipes:
            log.info("evaluators for %s (trained once, then cached)", datamodule.root)
            protocol_evaluators(datamodule, dict(zip(RECIPE, recipe)))

    return ensure


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
        if OWN not in rows:  # {variant: rows}
            variant, _, key = key.partition("/")
            if variant not in rows:
                raise ValueError(
                    f"sweep_metric={name!r}: the evaluation has variants "
                    f"{list(rows)}; name one, as report/<variant>/<column>"
                )
            rows, prefix = rows[variant], f"report/{variant}/"
        own = rows[OWN]
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
