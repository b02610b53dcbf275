"""W&B through Lightning's WandbLogger: offline by default, never a reason to stop training."""

from __future__ import annotations

import logging
import os

from hydra.utils import get_class
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from facediff import checkpoint
from facediff.config import instantiate

log = logging.getLogger(__name__)


def run_id_from_checkpoint(ckpt_path) -> str | None:
    """The W&B run a checkpoint logged to (verified, loaded without running code)."""
    ckpt = checkpoint.load(ckpt_path, "a facediff-train checkpoint to resume")
    return ckpt.get("wandb_run_id")


# overrides that say where a job runs or writes, not what it is: left out of its W&B name
NOT_THE_SETTING = ("hydra.", "paths.", "ckpt_path=", "threads=", "logger", "callbacks.progress")


def run_identity(cfg: DictConfig, hydra=None) -> dict:
    """How a run is told apart in the W&B dashboard: `name` from the job's own overrides
    (`experiment=multi seed=1`; task_name without any), `group` = the sweep of a `-m` job
    (<task_name>/<its sweep folder>: the ten runs of one study together) or task_name, `tags`
    (task_name, and the experiment and study chosen), `job_type` "train". `hydra`: the job's
    HydraConfig (None outside a Hydra main: task_name alone)."""
    task = str(cfg.get("task_name") or "train")
    out = {"name": task, "group": task, "tags": [task], "job_type": "train"}
    if hydra is None:
        return out
    own = [
        o.lstrip("+~")
        for o in hydra.overrides.task
        if not o.lstrip("+~").startswith(NOT_THE_SETTING)
    ]
    if own:
        out["name"] = " ".join(own)
    if str(hydra.mode) == "RunMode.MULTIRUN":
        out["group"] = f"{task}/{os.path.basename(str(hydra.sweep.dir).rstrip('/'))}"
    choices = hydra.runtime.choices
    out["tags"] += [f"{k}={choices[k]}" for k in ("experiment", "study") if choices.get(k)]
    return out


def hydra_config():
    """The running job's HydraConfig, None outside a Hydra main (a notebook, a test)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def wandb_logger(cfg: dict, run_id: str | None = None, identity: dict | None = None):
    """A WandbLogger from its config dict. A resumed run continues `run_id`, the W&B run its
    checkpoint recorded. Online logging that cannot start (no login, no network, a bad
    entity) falls back to offline mode, with a warning that says why."""
    cfg = dict(cfg)
    for key, value in (identity or {}).items():  # logger.wandb.<key> given: the user's
        if cfg.get(key) is None:
            cfg[key] = value
    if run_id and not cfg.get("id"):
        cfg["id"], cfg["resume"] = run_id, "allow"
        log.info("continuing W&B run %s", run_id)
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        cfg["offline"] = True
    logger = instantiate(cfg)
    if cfg.get("offline", False):
        return logger
    try:
        import wandb

        cfg_settings = wandb.Settings(init_timeout=30)
        logger._wandb_init["settings"] = cfg_settings
        _ = logger.experiment  # starts the run now, so failures surface here
        return logger
    except Exception as e:  # noqa: BLE001 - any failure of the W&B service
        log.warning(
            "W&B could not start online (%s: %s); logging offline instead", type(e).__name__, e
        )
        cfg["offline"] = True
        return instantiate(cfg)


def logger_for_checkpoint(ckpt: dict, save_dir) -> WandbLogger | None:
    """A WandbLogger continuing the W&B run a checkpoint trained in (its `wandb_run_id`, its
    project and mode), writing under `save_dir`, job_type "evaluate": facediff-evaluate logs its
    table there, beside the training's curves. None where the run logged to no W&B run."""
    run_id = ckpt.get("wandb_run_id")
    if not run_id:
        return None
    config = checkpoint.run_record(ckpt).config
    trained = ((config.get("logger") or {}).get("wandb")) or {}
    cfg = {
        "_target_": "lightning.pytorch.loggers.WandbLogger",
        "project": trained.get("project") or "facediff",
        "entity": trained.get("entity"),
        "offline": bool(trained.get("offline", True)),
        "save_dir": str(save_dir),
        "job_type": "evaluate",
    }
    return wandb_logger(cfg, run_id)


def build_loggers(cfg: DictConfig, wandb_run_id: str | None = None) -> list:
    """Instantiate the configured loggers; W&B continues `wandb_run_id` (the resumed
    checkpoint's run) and falls back to offline when online logging cannot start."""
    loggers = []
    for lg_cfg in (cfg.get("logger") or {}).values():
        lg_cfg = OmegaConf.to_container(lg_cfg, resolve=True)
        if issubclass(get_class(lg_cfg["_target_"]), WandbLogger):
            identity = run_identity(cfg, hydra_config())
            loggers.append(wandb_logger(lg_cfg, wandb_run_id, identity))
        else:
            loggers.append(instantiate(lg_cfg))
    return loggers


def finish_wandb(trainer, ok: bool = True) -> None:
    """End the W&B run of a trainer's WandbLogger (its files are complete after this)."""
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger):
            import wandb

            wandb.finish(exit_code=0 if ok else 1)
