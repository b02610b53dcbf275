"""facediff-train: build the parts from the config, train, checkpoint, resume."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from facediff.config import instantiate, register_resolvers, validate
from facediff.lit.callbacks import AtomicCheckpointIO

log = logging.getLogger("facediff.train")


def build_loggers(cfg: DictConfig) -> list:
    """Instantiate the configured loggers; W&B resumes the run of `ckpt_path` and falls back
    to offline when online logging cannot start."""
    loggers = []
    for _name, lg_cfg in (cfg.get("logger") or {}).items():
        lg_cfg = OmegaConf.to_container(lg_cfg, resolve=True)
        if "WandbLogger" in lg_cfg.get("_target_", ""):
            from facediff.lit.wandb import wandb_logger

            loggers.append(wandb_logger(lg_cfg, cfg.get("ckpt_path")))
        else:
            loggers.append(instantiate(lg_cfg))
    return loggers


def build(cfg: DictConfig, datamodule=None):
    """(datamodule, model) from a composed config, checked against each other."""
    datamodule = datamodule or instantiate(cfg.data)
    model = instantiate(cfg.model)
    requires = set(getattr(model, "requires", set()))
    datamodule.require_masks = "mask" in requires
    # Under DDP, Lightning starts ranks 1.. from inside fit (they run this again with LOCAL_RANK
    # set), so rank 0 has prepared the data before any other rank looks for it.
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        datamodule.prepare_data()
    datamodule.setup("fit")
    model.data_info = {
        "attr_names": datamodule.attr_names,
        "has_masks": datamodule.has_masks,
        "resolution": datamodule.resolution,
        "root": str(datamodule.root),
    }
    model.build_config = OmegaConf.to_container(cfg, resolve=True)
    return datamodule, model


def train(cfg: DictConfig, datamodule=None) -> dict:
    """Train as configured (on `datamodule` instead of cfg.data when given); returns the final
    logged metrics."""
    register_resolvers()
    validate(cfg)  # unknown option names and wrong types, before anything is built
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint")
    datamodule, model = build(cfg, datamodule)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:  # evaluators trained before any DDP rank starts
        for cb in callbacks:
            if hasattr(cb, "prepare") and hasattr(model, "generate"):
                cb.prepare(datamodule)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        logger=build_loggers(cfg) or False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
    )
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("trainable parameters: %.2f M", n_params / 1e6)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    except SIGTERMException:
        log.warning(
            "stopped by SIGTERM at step %d; resume with ckpt_path=%s",
            trainer.global_step,
            Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt",
        )
    finally:
        for lg in trainer.loggers:
            if hasattr(lg, "experiment") and type(lg).__name__ == "WandbLogger":
                import wandb

                wandb.finish(exit_code=0 if trainer.state.status.value == "finished" else 1)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    log.info("done: %s", metrics)
    if cfg.get("evaluate_after") and not trainer.fast_dev_run:
        metrics["report"] = evaluate_after(cfg, model, datamodule, trainer)
    return metrics


def evaluate_after(cfg: DictConfig, model, datamodule, trainer) -> dict:
    """The evaluation protocol (conf/evaluation) on the final model; prints the table."""
    from facediff.evaluation.report import evaluate_model

    protocol = OmegaConf.to_container(cfg.evaluation, resolve=True)
    out = Path(cfg.paths.output_dir) / "evaluation"
    report, table = evaluate_model(model, datamodule, protocol, out)
    gen = report["generated"]
    print(
        f"\nevaluation of {report['num_samples']} samples at step {trainer.global_step} (EMA "
        f"{gen['use_ema']}, {gen['sampler']} {gen['num_steps']} steps, guidance "
        f"{gen['guidance_scale']}; {out / 'metrics.json'}):\n{table}\n"
        + "".join(f"  {k}: {v}\n" for k, v in report["extractors"].items())
    )
    return report["rows"]


@hydra.main(version_base="1.3", config_path="pkg://facediff.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get("val/loss")


if __name__ == "__main__":
    main()
