"""Fidelity report: evaluators trained on the data, samples scored against their conditions.

The layout check compares each sample's parsed mask with its own conditioning mask and with
another condition's mask (the conditions rolled by one); the attribute check does the same with
the attribute classifier. A model that follows its conditions scores clearly higher on its own.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from facediff.evaluation.metrics import attribute_scores, mask_scores
from facediff.lit.callbacks import condition_batch, to_device
from facediff.lit.evaluators import AttributeClassifier, FaceParser

log = logging.getLogger(__name__)


def _fit(module: L.LightningModule, datamodule, steps: int, batch_size: int, path: Path):
    """Train an evaluator for `steps` on the train split (bf16 autocast) and save it."""
    ds = datamodule.dataset("train")
    gen = torch.Generator().manual_seed(0)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, generator=gen, drop_last=True)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        precision="bf16-mixed",
        limit_val_batches=0,
    )
    trainer.fit(module, loader)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)
    return module.eval()


def evaluators(
    datamodule, directory, parser_steps: int = 300, classifier_steps: int = 300, small: bool = True
):
    """(parser, classifier) for this data set, trained once and cached in `directory`."""
    directory = Path(directory)
    p_path, c_path = directory / "face_parser.ckpt", directory / "attribute_classifier.ckpt"
    n_attr = len(datamodule.attr_names)
    if small:  # sized for 32-64 px on a CPU
        p_kw = dict(
            hidden_sizes=(32, 64, 128, 256),
            depths=(1, 1, 1, 1),
            strides=(2, 2, 2, 2),
            sr_ratios=(1, 1, 1, 1),
            decoder_hidden_size=128,
        )
        c_kw = dict(widths=(32, 64, 128, 256), depths=(1, 1, 1, 1))
    else:  # ResNet-18 and SegFormer-B0 for 256 px
        p_kw, c_kw = {}, {}
    if p_path.is_file():
        parser = FaceParser.load_from_checkpoint(p_path, map_location="cpu").eval()
    else:
        log.info("training the face parser for %d steps", parser_steps)
        parser = _fit(FaceParser(**p_kw), datamodule, parser_steps, 64, p_path)
    if c_path.is_file():
        classifier = AttributeClassifier.load_from_checkpoint(c_path, map_location="cpu").eval()
    else:
        log.info("training the attribute classifier for %d steps", classifier_steps)
        classifier = _fit(
            AttributeClassifier(n_attr, **c_kw), datamodule, classifier_steps, 64, c_path
        )
    return parser, classifier


@torch.no_grad()
def score(images: torch.Tensor, cond: dict, parser, classifier, names) -> dict:
    """Scores of images (B, 3, H, W) in [-1, 1] against the conditions in `cond`."""
    out = {}
    if "mask" in cond:
        out.update(mask_scores(parser.parse(images), cond["mask"]))
    pred = classifier(images) > 0
    out.update(attribute_scores(pred, cond["attrs"], cond["attrs_known"], names))
    return out


def roll(cond: dict) -> dict:
    """Every sample paired with the next sample's condition."""
    return {k: v.roll(1, 0) for k, v in cond.items()}


@torch.no_grad()
def fidelity_report(
    model,
    datamodule,
    parser,
    classifier,
    num_conditions: int = 64,
    seed: int = 0,
    batch_size: int = 64,
    split: str = "val",
    sampler_kwargs: dict | None = None,
    use_ema: bool = True,
) -> dict:
    """Ground truth, samples vs their own conditions, samples vs shuffled conditions."""
    names = datamodule.attr_names
    cond = condition_batch(datamodule, split, num_conditions)
    model.eval()
    if use_ema:
        model.swap_ema(True)
    try:
        images = torch.cat(
            [
                model.generate(
                    to_device({k: v[i : i + batch_size] for k, v in cond.items()}, model.device),
                    seed=seed + i,
                    **(sampler_kwargs or {}),
                )
                .float()
                .cpu()
                for i in range(0, len(cond["image"]), batch_size)
            ]
        )
    finally:
        if use_ema:
            model.swap_ema(False)
    parser, classifier = parser.float().cpu(), classifier.float().cpu()
    rows = {
        "real images (ground truth)": score(cond["image"], cond, parser, classifier, names),
        "samples vs own conditions": score(images, cond, parser, classifier, names),
        "samples vs shuffled conditions": score(images, roll(cond), parser, classifier, names),
    }
    return {
        "num_conditions": len(images),
        "attributes": names,
        "rows": rows,
        "images": images,
        "real_images": cond["image"],
    }


def markdown_table(rows: dict) -> str:
    cols = [
        ("fid", "FID*"),
        ("kid", "KID* x100"),
        ("mask_acc", "mask acc."),
        ("miou", "mIoU"),
        ("attr_acc", "attribute acc."),
    ]
    lines = ["| | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        cells = [
            (f"{r[k]:.2f}" if k == "fid" else f"{100 * r[k]:.1f}") if k in r else "-"
            for k, _ in cols
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(report: dict, out_dir, extra: dict | None = None) -> str:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(report["rows"])
    data = {k: v for k, v in report.items() if k not in ("images", "real_images")} | (extra or {})
    (out_dir / "metrics.json").write_text(json.dumps(data, indent=1))
    (out_dir / "report.md").write_text(table + "\n")
    return table
