"""The evaluators' cache: a face parser and an attribute classifier per prepared data set,
trained once with their own facediff-train experiments (`experiment=eval_parser`,
`eval_classifier`), then loaded and checked against the data and the protocol they serve.

facediff-train trains them before fit, on global rank 0 (`facediff.cli.train`), and
`facediff-prepare evaluators=true` ahead of a sweep; they are never trained inside a
multi-process fit.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from facediff import checkpoint
from facediff.data.labels import mask_vocabulary
from facediff.data.prepared import data_lock
from facediff.lit.evaluators import AttributeClassifier, FaceParser

log = logging.getLogger(__name__)

EVALUATORS = {
    "face_parser": ("eval_parser", FaceParser),
    "attribute_classifier": ("eval_classifier", AttributeClassifier),
}


def evaluators_dir(datamodule, directory=None) -> Path:
    return Path(directory) if directory else Path(f"{datamodule.root}-evaluators")


def train_evaluator(
    name: str, datamodule, directory, steps: int, experiment: str | None = None
) -> Path:
    """Train one evaluator with its facediff-train experiment (`experiment=eval_parser` or
    `eval_classifier`, or the recipe `experiment` names) on `datamodule`, and cache its
    checkpoint as <directory>/<name>.ckpt only once the run has completed its `steps`. An
    interrupted run leaves no cache entry; its own last.ckpt (in <directory>/<name>_run/) is
    resumed by the next call."""
    from facediff.config import compose
    from facediff.data.datamodule import FaceDataModule
    from facediff.lit.training import fit

    default, cls = EVALUATORS[name]
    experiment = experiment or default
    directory = Path(directory)
    run_dir = directory / f"{name}_run"
    last = run_dir / "checkpoints" / "last.ckpt"
    overrides = [
        f"experiment={experiment}",
        f"data.resolution={datamodule.resolution}",
        # the data set's vocabulary: the parser's classes (19 faces, 24 DeepFashion)
        f"data.num_mask_classes={len(mask_vocabulary(datamodule.data.meta['mask_classes']))}",
        f"paths.output_dir={run_dir}",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={min(100, steps)}",
        "logger=csv",
        "~callbacks.progress_bar",
        "trainer.enable_progress_bar=false",
    ]
    if last.is_file():
        try:
            done = checkpoint.load(last, "an evaluator run's last checkpoint")["global_step"]
        except (ValueError, KeyError) as e:
            log.warning("%s is unusable (%s); training the %s from the start", last, e, name)
            shutil.rmtree(run_dir / "checkpoints")
        else:
            if done < steps:
                log.info("resuming the %s from %s (step %d of %d)", name, last, done, steps)
                overrides.append(f"ckpt_path={last}")
            else:
                shutil.rmtree(run_dir / "checkpoints")
    cfg = compose("train", overrides)
    if not str(cfg.model.get("_target_", "")).endswith(f".{cls.__name__}"):
        raise ValueError(
            f"experiment={experiment}: not a {cls.__name__} recipe (its model is "
            f"{cfg.model.get('_target_')}); the {name} is trained by experiment={default} or "
            "an experiment built on it"
        )
    train_items = len(datamodule.data.split("train"))
    if cfg.data.batch_size > train_items:  # a small data set: the whole train split a batch
        log.info("%s: batch %d for its %d train items", name, train_items, train_items)
    dm = FaceDataModule(  # every attribute of the prepared data: one classifier serves all
        str(datamodule.root),
        datamodule.resolution,
        attributes=None,
        batch_size=min(cfg.data.batch_size, train_items),
        seed=cfg.seed,
        verify_hash=False,
    )
    if "num_attributes" in cfg.model:
        cfg.model.num_attributes = len(dm.attr_names)
    log.info("training the %s for %d steps (experiment=%s)", name, steps, experiment)
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:  # the caller's random streams are left as they were
        result = fit(cfg, datamodule=dm, single_process=True)  # rank 0 alone, before DDP
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
    if result.trainer.global_step != steps or not last.is_file():
        raise RuntimeError(
            f"the {name} run in {run_dir} stopped at step {result.trainer.global_step} of "
            f"{steps}; nothing was cached"
        )
    path = directory / f"{name}.ckpt"
    os.replace(last, path)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return path


def load_evaluator(name: str, path: Path, datamodule, steps: int, experiment: str | None = None):
    """The cached evaluator at `path`, after checking what it was trained on against this
    data and protocol: a completed run (global_step == its max_steps == `steps`) of the
    evaluator's experiment (`experiment`, or its default), on the same resolution and data
    content hash."""
    default, cls = EVALUATORS[name]
    experiment = experiment or default
    ckpt = checkpoint.load(path, f"a {cls.__name__} checkpoint")
    what = f"{cls.__name__} (facediff-train experiment={experiment})"
    try:
        run = checkpoint.run_record(ckpt, path, what)
        if "state_dict" not in ckpt:
            raise checkpoint.CheckpointError(f"{path}: not a {what} checkpoint (no state_dict)")
    except checkpoint.CheckpointError as e:
        raise checkpoint.CheckpointError(f"{e}; delete it to train it again") from None
    config, data = run.config, run.data
    recorded = {
        "experiment": config.get("task_name"),
        "steps": ckpt.get("global_step"),
        "resolution": data.get("resolution"),
        "content_hash": data.get("content_hash"),
    }
    expected = {
        "experiment": experiment,
        "steps": steps,
        "resolution": datamodule.resolution,
        "content_hash": datamodule.data.meta.get("content_hash"),
    }
    planned = (config.get("trainer") or {}).get("max_steps")
    if recorded["steps"] != planned:
        raise ValueError(
            f"{path}: a run stopped at step {recorded['steps']} of {planned}, not a completed "
            "evaluator; delete it to train it again"
        )
    wrong = {k: (recorded[k], expected[k]) for k in expected if recorded[k] != expected[k]}
    if wrong:
        what = "; ".join(f"{k}: cached {a!r}, needed {b!r}" for k, (a, b) in wrong.items())
        raise ValueError(
            f"{path}: trained on something else ({what}); delete it to train it again, or point "
            "evaluation.evaluators_dir elsewhere"
        )
    try:  # what LightningModule.load_from_checkpoint does, from the verified dict
        module = cls(**ckpt.get("hyper_parameters", {}))
        module.load_state_dict(ckpt["state_dict"])
        module.on_load_checkpoint(ckpt)
    except (TypeError, KeyError, RuntimeError) as e:
        raise ValueError(
            f"{path}: not a {cls.__name__} checkpoint of this facediff version "
            f"({type(e).__name__}: {e}); delete it to train it again"
        ) from e
    return module.float().eval()


RECIPE = ("evaluators_dir", "parser_steps", "classifier_steps", "parser_experiment")


def protocol_evaluators(datamodule, p, train: bool = True):
    """evaluators() with a protocol's options (conf/evaluation, or the fidelity callback's
    copies of them: `RECIPE`)."""
    return evaluators(
        datamodule,
        p["evaluators_dir"],
        p["parser_steps"],
        p["classifier_steps"],
        train,
        p.get("parser_experiment"),
    )


def evaluators(
    datamodule,
    directory=None,
    parser_steps: int = 300,
    classifier_steps: int = 300,
    train: bool = True,
    parser_experiment: str | None = None,
):
    """(parser, classifier) for this prepared data set: <directory>/face_parser.ckpt and
    attribute_classifier.ckpt, trained there on first use (`train`; otherwise a missing one is
    an error) and checked when loaded (`load_evaluator`). The parser is None for data without
    masks. `parser_experiment`: the parser's recipe (default eval_parser; eval_parser64 at
    64 px, where the small parts need the Dice loss)."""
    directory = evaluators_dir(datamodule, directory)
    out = []
    recipes = {"face_parser": parser_experiment, "attribute_classifier": None}
    for name, steps in (("face_parser", parser_steps), ("attribute_classifier", classifier_steps)):
        if name == "face_parser" and not datamodule.has_masks:  # MAAD-Face: no masks to parse
            out.append(None)
            continue
        path = directory / f"{name}.ckpt"
        if not path.is_file() and not train:
            raise FileNotFoundError(
                f"{path}: the {name} is not trained yet, and it is not trained inside a "
                "multi-process fit; facediff-train trains it before fit, or run facediff-prepare "
                "evaluators=true first"
            )
        if not path.is_file():  # parallel sweep jobs on new data: one trains it, the others wait
            with data_lock(directory / name):
                if not path.is_file():  # not cached by another job meanwhile
                    train_evaluator(name, datamodule, directory, steps, recipes[name])
        out.append(load_evaluator(name, path, datamodule, steps, recipes[name]))
    parser, classifier = out
    classifier.columns(datamodule.attr_names, str(directory / "attribute_classifier.ckpt"))
    return parser, classifier
