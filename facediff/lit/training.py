"""Training a composed config: build the parts, choose the precision, check a resume, fit.

`fit(cfg)` is the one function that trains an experiment: facediff-train calls it (through
`facediff.api.train`), and so does the evaluation when it trains its evaluators.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from facediff import checkpoint
from facediff.config import instantiate, register_resolvers, validate
from facediff.data.latents import cache_latents
from facediff.lit.callbacks import AtomicCheckpointIO, LastCheckpoint, RunInfo
from facediff.models.autoencoders import PixelSpace
from facediff.precision import resolve_precision
from facediff.provenance import LOADED, code_version

log = logging.getLogger("facediff.train")


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM stopped a run after it wrote its last checkpoint; the job must stop
    with a non-zero exit (128 + the signal number), not carry on as if training had ended."""

    def __init__(self, signal_name: str, step: int, path: Path):
        import signal

        self.signal_name, self.step, self.path = signal_name, step, path
        self.exit_code = 128 + int(getattr(signal, signal_name))
        super().__init__(
            f"{signal_name} received: stopped at step {step}; resume with ckpt_path={path}"
        )


@dataclass
class FitResult:
    metrics: dict
    model: L.LightningModule
    datamodule: L.LightningDataModule
    trainer: L.Trainer


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


def data_info(datamodule, cfg: DictConfig) -> dict:
    """What a model is trained on, as resume, sampling and the evaluator cache compare it."""
    meta = datamodule.data.meta
    ae = cfg.get("autoencoder")
    latent = None
    if ae is not None and "model" in cfg and "autoencoder" in cfg.model:
        latent = {k: ae.get(k) for k in ("_target_", "pretrained") if k in ae}
    return {
        "attr_names": datamodule.attr_names,
        "has_masks": datamodule.has_masks,
        "mask_classes": list(meta.get("mask_classes", [])),
        "resolution": datamodule.resolution,
        "root": str(Path(datamodule.root).resolve()),  # absolute: usable from any cwd
        "source": meta.get("source"),
        "content_hash": meta.get("content_hash"),
        "latent_space": latent,
        "control_default": datamodule.control_default(),
    }


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
    first_stage = getattr(model, "autoencoder", None)
    if (
        (cfg.get("latent") or {}).get("cache")
        and first_stage is not None
        and not isinstance(first_stage, PixelSpace)
    ):
        # encoded once per data set and autoencoder; training then never runs the encoder
        datamodule.use_latents(cache_latents(datamodule, first_stage))
    model.data_info = data_info(datamodule, cfg)
    model.build_config = OmegaConf.to_container(cfg, resolve=True)
    return datamodule, model


RESUME_MUST_MATCH = {  # data_info key -> the option a user changes to make it differ
    "resolution": "data.resolution",
    "attr_names": "data.attributes",
    "mask_classes": "the data set's mask classes",
    "latent_space": "autoencoder",
}


def check_resume(ckpt_path, model) -> None:
    """A resumed run must train on what the checkpoint trained on: a different resolution,
    attribute list (names and order), mask classes or latent space is an error naming both
    values; a changed data content hash or source is a warning (and recorded in the run)."""
    ckpt = checkpoint.load(ckpt_path, "a facediff-train checkpoint to resume")
    then = (ckpt.get("facediff") or {}).get("data")
    if not then:
        raise checkpoint.CheckpointError(
            f"ckpt_path={ckpt_path}: not written by facediff-train (no 'facediff' run record)"
        )
    try:  # the pretrained weights it left out must be the ones in place now
        if hasattr(model, "restore_pretrained"):  # LatentDiffusion (not an evaluator)
            model.restore_pretrained(ckpt)
    except checkpoint.CheckpointError as e:
        raise checkpoint.CheckpointError(f"ckpt_path={ckpt_path}: {e}") from None
    now = model.data_info
    for key, option in RESUME_MUST_MATCH.items():
        if key in then and then[key] != now.get(key):
            raise ValueError(
                f"ckpt_path={ckpt_path} was trained with {key} {then[key]!r}, this run has "
                f"{now.get(key)!r} ({option}); resume with the same setting, or start a new run "
                "from its weights instead"
            )
    changed = [k for k in ("source", "content_hash") if then.get(k) != now.get(k)]
    if changed:
        log.warning(
            "resuming %s on other data: %s (was %s)",
            ckpt_path,
            {k: now.get(k) for k in changed},
            {k: then.get(k) for k in changed},
        )
        now["resumed_on_changed_data"] = {k: then.get(k) for k in changed}


@contextmanager
def ddp_ranks_join_this_job():
    """Under a Hydra multirun, Lightning starts DDP ranks 1.. by running the command line again
    (`sys.argv` + `hydra.run.dir=<run dir>`). That command line holds `-m` and the sweep's
    value lists, so each rank > 0 would run the whole sweep again and write a sweep folder of
    its own. While fit starts them, the command line is this job's own overrides and the run
    dir is this job's output folder: rank > 0 joins the job in rank 0's folders. After fit,
    the process group and the launcher's environment variables (LOCAL_RANK, MASTER_PORT, ...)
    go, so the next job of the sweep starts its own ranks instead of waiting for old ones."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        yield
        return
    hc = HydraConfig.get()
    argv, run_dir = list(sys.argv), hc.run.dir
    env = {k: os.environ.get(k) for k in DDP_ENV}
    sys.argv = [argv[0], *hc.overrides.task]
    with read_write(hc.run):
        hc.run.dir = hc.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        with read_write(hc.run):
            hc.run.dir = run_dir
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RANK")


def finish_wandb(trainer, ok: bool = True) -> None:
    """End the W&B run of a trainer's WandbLogger (its files are complete after this)."""
    for lg in trainer.loggers:
        if hasattr(lg, "experiment") and type(lg).__name__ == "WandbLogger":
            import wandb

            wandb.finish(exit_code=0 if ok else 1)


def fit(cfg: DictConfig, datamodule=None, keep_wandb_open: bool = False) -> FitResult:
    """Train as configured (on `datamodule` instead of cfg.data when given). Raises
    Interrupted after SIGINT/SIGTERM (the last checkpoint written first). With
    `keep_wandb_open` a run that finished leaves its W&B run open for the evaluation to log
    into (the caller then calls `finish_wandb`)."""
    register_resolvers()
    validate(cfg)  # unknown option names and wrong types, before anything is built
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint")
    precision, why = resolve_precision(
        cfg.trainer.get("precision"), cfg.trainer.get("accelerator", "auto")
    )
    with open_dict(cfg):
        cfg.trainer.precision = precision
        cfg.precision_reason = why
    log.info("precision %s: %s", precision, why)
    code = code_version()
    if code != LOADED:
        log.warning(
            "the facediff checkout changed under this process: its code was imported at %s, "
            "the configs were read at %s, so this job mixes the two (a sweep's workers keep "
            "the modules they imported); run sweeps from a clone or a git worktree you leave "
            "alone",
            LOADED,
            code,
        )
    datamodule, model = build(cfg, datamodule)
    if ckpt_path:
        check_resume(ckpt_path, model)
    fast = bool(cfg.trainer.get("fast_dev_run"))
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks.append(RunInfo(model.build_config, model.data_info))
    if int(os.environ.get("LOCAL_RANK", 0)) == 0 and not fast:
        for cb in callbacks:  # evaluators trained before any DDP rank starts
            if hasattr(cb, "prepare") and hasattr(model, "generate"):
                cb.prepare(datamodule)
    loggers = build_loggers(cfg)
    if not loggers:  # logger=none: callbacks that need a logger are left out, saying so
        for cb in [c for c in callbacks if type(c).__name__ == "LearningRateMonitor"]:
            log.info("logger=none: no LearningRateMonitor")
            callbacks.remove(cb)
    trainer: L.Trainer = instantiate(
        cfg.trainer, logger=loggers or False, callbacks=callbacks, plugins=[AtomicCheckpointIO()]
    )
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("trainable parameters: %.2f M", n_params / 1e6)
    for lg in trainer.loggers:
        lg.log_hyperparams(
            {"config": model.build_config, "params_M": n_params / 1e6, "precision": precision}
        )
    try:
        with ddp_ranks_join_this_job():
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:  # raised between steps; LastCheckpoint has saved that step
        pass
    finally:
        finished = trainer.state.status.value == "finished"
        if not (keep_wandb_open and finished and not trainer.received_sigterm):
            finish_wandb(trainer, finished)
    for cb in callbacks:
        if isinstance(cb, LastCheckpoint) and cb.interrupted(trainer):
            raise Interrupted(cb.interrupted(trainer), trainer.global_step, cb.path)
    if trainer.received_sigterm:
        raise Interrupted("SIGTERM", trainer.global_step, Path("(no last_checkpoint callback)"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    log.info("done: %s", metrics)
    return FitResult(metrics, model, datamodule, trainer)


__all__ = ["FitResult", "Interrupted", "build", "build_loggers", "check_resume", "fit"]
