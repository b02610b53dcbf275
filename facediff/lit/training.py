"""Training a composed config: choose the precision, build the trainer, the data and the model
(rank 0's one-time work once per job), check a resume, fit.

`fit(cfg)` is the one function that trains an experiment: facediff-train calls it
(`facediff.cli.train.train`), and so does the evaluator cache when it trains an evaluator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, Timer
from lightning.pytorch.plugins.environments import LightningEnvironment, SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from facediff import checkpoint
from facediff.config import instantiate, register_resolvers, validate
from facediff.data.latents import cache_latents
from facediff.lit.callbacks import AtomicCheckpointIO, Interrupted, LastCheckpoint, RunInfo
from facediff.lit.ddp import check_same_job, ddp_ranks_join_this_job, rank_zero_first
from facediff.lit.wandb import build_loggers, finish_wandb
from facediff.models.autoencoders import PixelSpace
from facediff.precision import resolve_precision
from facediff.provenance import warn_if_checkout_changed

log = logging.getLogger("facediff.train")


@dataclass
class FitResult:
    metrics: dict
    model: L.LightningModule
    datamodule: L.LightningDataModule
    trainer: L.Trainer


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


def build(cfg: DictConfig, datamodule=None, trainer=None, before_fit=None):
    """(datamodule, model) from a composed config, checked against each other.

    The job's one-time work happens once, on global rank 0 (`facediff.lit.ddp`): preparing
    the data (and checking its content hash), encoding the latent cache, and `before_fit(dm)`
    (the evaluators). The other ranks of a DDP job wait for it, then open the same data without
    hashing it again and check they read what rank 0 hashed."""
    datamodule = datamodule or instantiate(cfg.data)
    model = instantiate(cfg.model)
    requires = set(getattr(model, "requires", set()))
    datamodule.require_masks = "mask" in requires
    first_stage = getattr(model, "autoencoder", None)
    latents = (
        (cfg.get("latent") or {}).get("cache")
        and first_stage is not None
        and not isinstance(first_stage, PixelSpace)
    )

    def open_data():
        datamodule.setup("fit")
        if latents:  # encoded once per data set and autoencoder; training never runs it
            datamodule.use_latents(cache_latents(datamodule, first_stage))

    def rank_zero_work() -> dict:
        datamodule.prepare_data()
        open_data()
        if before_fit is not None:
            before_fit(datamodule)
        return {
            "content_hash": datamodule.data.meta.get("content_hash"),
            "precision": str(cfg.trainer.get("precision")),
        }

    if trainer is None:
        rank_zero_work()
    else:
        shared = rank_zero_first(
            trainer, cfg.paths.output_dir, rank_zero_work, float(cfg.get("ddp_wait_s") or 3600)
        )
        if datamodule.data is None:  # a rank > 0: rank 0 prepared and hashed the data
            datamodule.verify_hash = False
            open_data()
        check_same_job(shared, datamodule, str(cfg.trainer.get("precision")))
    model.data_info = data_info(datamodule, cfg)
    model.build_config = OmegaConf.to_container(cfg, resolve=True)
    return datamodule, model


RESUME_MUST_MATCH = {  # data_info key -> the option a user changes to make it differ
    "resolution": "data.resolution",
    "attr_names": "data.attributes",
    "mask_classes": "the data set's mask classes",
    "latent_space": "autoencoder",
}


def check_resume(ckpt_path, model, ckpt: dict | None = None) -> None:
    """A resumed run must train on what the checkpoint trained on: a different resolution,
    attribute list (names and order), mask classes or latent space is an error naming both
    values; a changed data content hash or source is a warning (and recorded in the run).
    `ckpt`: the checkpoint already read (read here otherwise)."""
    if ckpt is None:
        ckpt = checkpoint.load(ckpt_path, "a facediff-train checkpoint to resume")
    then = checkpoint.run_record(ckpt, f"ckpt_path={ckpt_path}").data
    try:  # the pretrained weights it left out must be the ones in place now
        checkpoint.restore_frozen(model, ckpt)  # a no-op for a checkpoint that left nothing out
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


def resume_path(cfg: DictConfig) -> str | None:
    """The checkpoint `ckpt_path` names: a file; `auto`: this run's own last.ckpt when it
    exists (a requeued job, a sweep run again into its folder), nothing otherwise; `last`: the
    same, but it must exist."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path in ("auto", "last"):
        last = (cfg.get("callbacks") or {}).get("last_checkpoint") or {}
        own = Path(last.get("dirpath") or Path(cfg.paths.output_dir) / "checkpoints") / "last.ckpt"
        if own.is_file():
            log.info("ckpt_path=%s: resuming from %s", ckpt_path, own)
            return str(own)
        if ckpt_path == "last":
            raise FileNotFoundError(f"ckpt_path=last: this run has no {own} yet")
        log.info("ckpt_path=auto: no %s yet, starting from step 0", own)
        return None
    if ckpt_path and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint")
    return ckpt_path or None


def job_precision(cfg: DictConfig, ckpt: dict | None) -> tuple[str, str]:
    """trainer.precision for this job: the user's; else, resuming, the checkpoint's (a run
    that changed precision midway would not continue exactly); else chosen for the device."""
    setting = cfg.trainer.get("precision")
    where = f"ckpt_path={cfg.get('ckpt_path')}"
    then = (checkpoint.run_record(ckpt, where).config.get("trainer") or {}) if ckpt else {}
    if setting in (None, "auto") and then.get("precision") not in (None, "auto"):
        return str(then["precision"]), (
            f"the precision of the checkpoint resumed ({then['precision']}); set "
            "trainer.precision to change it"
        )
    return resolve_precision(setting, cfg.trainer.get("accelerator", "auto"))


def set_precision(cfg: DictConfig, ckpt: dict | None) -> None:
    """trainer.precision (and precision_reason) of this job, in the config (`job_precision`)."""
    precision, why = job_precision(cfg, ckpt)
    with open_dict(cfg):
        cfg.trainer.precision = precision
        cfg.precision_reason = why
    log.info("precision %s: %s", precision, why)


def build_callbacks(cfg: DictConfig, loggers: list) -> list[L.Callback]:
    """The configured callbacks and RunInfo; without a logger (logger=none), those that need
    one are left out, saying so."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks.append(RunInfo())
    if not loggers:
        for cb in [c for c in callbacks if isinstance(c, LearningRateMonitor)]:
            log.info("logger=none: no LearningRateMonitor")
            callbacks.remove(cb)
    return callbacks


def build_plugins(ckpt_path: str | None, ckpt: dict | None, single_process: bool) -> list:
    """Atomic checkpoints (handing Lightning the checkpoint already read), and the cluster
    environment: one process (`single_process`), or SLURM's without Lightning's own requeue
    (submitit owns requeue: docs/scaling.md)."""
    plugins = [AtomicCheckpointIO(preloaded={ckpt_path: ckpt} if ckpt_path else None)]
    if single_process:
        plugins.append(LightningEnvironment())
    elif SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


def log_hyperparams(trainer: L.Trainer, model) -> None:
    """The resolved config, the trainable parameter count and the precision, to every logger."""
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("trainable parameters: %.2f M", n_params / 1e6)
    precision = model.build_config["trainer"]["precision"]
    for lg in trainer.loggers:
        lg.log_hyperparams(
            {"config": model.build_config, "params_M": n_params / 1e6, "precision": precision}
        )


def raise_if_interrupted(trainer: L.Trainer) -> None:
    """Interrupted where SIGINT or SIGTERM stopped the fit (its last checkpoint named)."""
    for cb in trainer.callbacks:
        if isinstance(cb, LastCheckpoint) and cb.interrupted(trainer):
            raise Interrupted(cb.interrupted(trainer), trainer.global_step, cb.path)
    if trainer.received_sigterm:
        raise Interrupted("SIGTERM", trainer.global_step, Path("(no last_checkpoint callback)"))


def fit(
    cfg: DictConfig,
    datamodule=None,
    keep_wandb_open: bool = False,
    before_fit=None,
    single_process: bool = False,
) -> FitResult:
    """Train as configured (on `datamodule` instead of cfg.data when given). Raises
    Interrupted after SIGINT/SIGTERM (the last checkpoint written first).

    `before_fit(datamodule)`: the job's other one-time work (the evaluators), done on global
    rank 0 before any process group forms. `keep_wandb_open`: a run that finished leaves its
    W&B run open for the evaluation to log into (the caller then calls `finish_wandb`).
    `single_process`: one process whatever the cluster says (an evaluator trained by rank 0
    inside a SLURM job)."""
    register_resolvers()
    validate(cfg)  # unknown option names and wrong types, before anything is built
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    ckpt_path = resume_path(cfg)
    # read once: the resume check, the W&B run id, the precision and Lightning's restore
    ckpt = (
        checkpoint.load(ckpt_path, "a facediff-train checkpoint to resume") if ckpt_path else None
    )
    set_precision(cfg, ckpt)
    warn_if_checkout_changed()
    loggers = build_loggers(cfg, (ckpt or {}).get("wandb_run_id"))
    callbacks = build_callbacks(cfg, loggers)
    plugins = build_plugins(ckpt_path, ckpt, single_process)
    trainer: L.Trainer = instantiate(
        cfg.trainer, logger=loggers or False, callbacks=callbacks, plugins=plugins
    )
    # trainer.max_time's Timer first: the stop it asks for at a step's end is seen by
    # LastCheckpoint at that step, and saved there (resumable exactly)
    trainer.callbacks.sort(key=lambda c: not isinstance(c, Timer))
    fast = bool(cfg.trainer.get("fast_dev_run"))
    datamodule, model = build(cfg, datamodule, trainer, None if fast else before_fit)
    if ckpt_path:
        check_resume(ckpt_path, model, ckpt)
    del ckpt  # Lightning gets it from AtomicCheckpointIO, once
    log_hyperparams(trainer, model)
    try:
        with ddp_ranks_join_this_job():
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:  # raised between steps; LastCheckpoint has saved that step
        pass
    finally:
        finished = trainer.state.status.value == "finished"
        if not (keep_wandb_open and finished and not trainer.received_sigterm):
            finish_wandb(trainer, finished)
    raise_if_interrupted(trainer)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    log.info("done: %s", metrics)
    return FitResult(metrics, model, datamodule, trainer)


__all__ = [
    "FitResult",
    "build",
    "check_resume",
    "fit",
    "job_precision",
    "resume_path",
]
