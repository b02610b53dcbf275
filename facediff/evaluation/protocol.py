"""The evaluation protocol: samples for the reference split's conditions, their scores (the
rows of `facediff.evaluation.tables`), the protocol's variants, the evaluation after training
and the flip check.

One function scores a folder of generated images against their conditions
(`score_generated`); `sample_for_protocol` writes such a folder from a model, so a checkpoint's
numbers and a folder's numbers come from the same code.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.data import default_collate
from tqdm.auto import tqdm

from facediff.data.batch import condition_batch, repeat_batch, to_device
from facediff.data.labels import MASK_CLASSES, NUM_MASK_CLASSES
from facediff.data.transforms import to_float, to_uint8
from facediff.diffusion.solvers import sampler_option
from facediff.evaluation.evaluator_cache import protocol_evaluators
from facediff.evaluation.extractors import DomainFeatures, inception
from facediff.evaluation.flip import face_center_x, flip_lines, mirror
from facediff.evaluation.generated import read_generated, write_generated
from facediff.evaluation.metrics import (
    attribute_scores,
    feature_distances,
    feature_diversity,
    inception_score,
    lpips_diversity,
    mask_scores,
)
from facediff.evaluation.tables import OWN, REAL, SHUFFLED, log_table_to_loggers, write_report

log = logging.getLogger(__name__)


@torch.no_grad()
def read_images(images: torch.Tensor, parser, classifier, names):
    """What the evaluators read in images (B, 3, H, W) in [-1, 1], on their own device in
    batches of 64: (the parser's label maps (B, H, W), None without a parser; the classifier's
    0/1 predictions (B, len(names)) for the attributes `names`)."""
    dev = next(classifier.parameters()).device
    labels = None
    if parser is not None:
        labels = torch.cat([parser.parse(b.to(dev)).cpu() for b in images.split(64)])
    cols = classifier.columns(names)
    pred = torch.cat([(classifier(b.to(dev)) > 0)[:, cols].cpu() for b in images.split(64)])
    return labels, pred


@torch.no_grad()
def score(images: torch.Tensor, cond: dict, parser, classifier, names) -> dict:
    """Fidelity of images (B, 3, H, W) in [-1, 1] to the conditions in `cond`."""
    out = {}
    labels, pred = read_images(images, parser if "mask" in cond else None, classifier, names)
    if labels is not None:
        out.update(
            mask_scores(labels, cond["mask"], parser.hparams.get("num_labels", NUM_MASK_CLASSES))
        )
    out.update(attribute_scores(pred, cond["attrs"], cond["attrs_known"], names))
    return out


def roll(cond: dict) -> dict:
    """Every sample paired with the next sample's condition."""
    return {k: v.roll(1, 0) for k, v in cond.items()}


@torch.no_grad()
def sample_for_protocol(model, datamodule, p, out_dir) -> Path:
    """Generate the protocol's images for a model and write them as a generated folder: one
    sample for each of the first `num_conditions` items of `split` (the batch starting at row r
    with seed + r), then `samples_per_condition` samples for the first `diversity_conditions`."""
    if p.get("sampler"):  # another solver than the checkpoint's (conf/sampler/<name>)
        model.sampler = sampler_option(p["sampler"], like=model.sampler)
    cond = condition_batch(datamodule, p["split"], p["num_conditions"], model)
    n = len(cond["image"])
    cond = {k: v for k, v in cond.items() if k != "image"}
    cond["sample"] = torch.zeros(n, dtype=torch.long)
    k, d = p["samples_per_condition"], min(p["diversity_conditions"], n)
    if d and k > 1:
        extra = repeat_batch({key: v[:d] for key, v in cond.items()}, k - 1)
        extra["sample"] = torch.arange(1, k).repeat(d)
        cond = {key: torch.cat([cond[key], extra[key]]) for key in cond}
    images = protocol_images(model, cond, p)
    sampler = model.sampler
    meta = {
        "data_root": str(datamodule.root),
        "split": p["split"],
        "resolution": datamodule.resolution,
        "attr_names": list(datamodule.attr_names),
        "sampler": type(sampler).__name__ + f"({sampler.scheduler_cls.__name__})",
        "num_steps": p["num_steps"] or sampler.num_steps,
        "eta": sampler.eta if p["eta"] is None else p["eta"],
        "guidance_scale": sampler.guidance_scale
        if p["guidance_scale"] is None
        else p["guidance_scale"],
        "use_ema": p["use_ema"],
        "seed": p["seed"],
    }
    return write_generated(out_dir, images, cond, meta)


@torch.no_grad()
def protocol_images(model, cond: dict, p, desc: str = "sampling for the evaluation"):
    """uint8 images (N, 3, H, W) for the conditions in `cond` with the protocol's solver
    settings: the batch starting at row r with seed + r, the EMA weights if `use_ema`."""
    kw = {"num_steps": p["num_steps"], "eta": p["eta"], "guidance_scale": p["guidance_scale"]}
    bs, total = p["batch_size"], len(cond["index"])
    images = []
    with model.ema_weights(p["use_ema"]), tqdm(total=total, desc=desc, unit="img") as bar:
        for i in range(0, total, bs):
            batch = to_device({key: v[i : i + bs] for key, v in cond.items()}, model.device)
            images.append(to_uint8(model.generate(batch, seed=p["seed"] + i, **kw)).cpu())
            bar.update(min(bs, total - i))
    return torch.cat(images)


@torch.no_grad()
def flip_check(model, datamodule, parser, classifier, p) -> dict:
    """The flip check (`facediff.evaluation.flip`) on the protocol `p`'s first
    `num_conditions` conditions, with its solver settings and seeds."""
    if "control" not in model.conditioner.names:
        raise ValueError(
            "evaluation.flip_check=true: the model has no control condition; train it with a "
            "conditioner that has one (conditioner=attr_control or multi_control)"
        )
    if parser is None:
        raise ValueError(
            f"evaluation.flip_check=true: {datamodule.root} has no masks to train a face "
            "parser on, and the check reads the layout with one"
        )
    if list(datamodule.data.meta["mask_classes"]) != list(MASK_CLASSES):
        raise ValueError(
            f"evaluation.flip_check=true: {datamodule.root} is not face data (its mask classes "
            "are not CelebAMask-HQ's), and the check reads where the face is"
        )
    cond = condition_batch(datamodule, p["split"], p["num_conditions"], model)
    cond = {k: v for k, v in cond.items() if k != "image"}
    names = list(datamodule.attr_names)
    labels, preds, acc = [], [], []
    for flag in (0, 1):
        c = dict(cond, control=cond["control"].clone())
        c["control"][:, 0] = flag
        images = to_float(protocol_images(model, c, p, f"sampling with the flip flag {flag}"))
        label, pred = read_images(images, parser, classifier, names)
        labels.append(label)
        preds.append(pred)
        acc.append(attribute_scores(pred, c["attrs"], c["attrs_known"], names)["attr_acc"])
    centre = [face_center_x(m).mean().item() for m in labels]
    return {
        "num_conditions": len(cond["index"]),
        "layout_agreement_mirrored": (labels[1] == mirror(labels[0])).float().mean().item(),
        "layout_agreement_unmirrored": (labels[1] == labels[0]).float().mean().item(),
        "face_center_x_flip0": centre[0],
        "face_center_x_flip1": centre[1],
        "attr_acc_flip0": acc[0],
        "attr_acc_flip1": acc[1],
        "attr_agreement": (preds[0] == preds[1]).float().mean().item(),
    }


def reference_items(datamodule, split: str, index: torch.Tensor) -> dict:
    """The items of `split` with these data-array indices, collated (real images, conditions)."""
    ds = datamodule.dataset(split)
    where = {int(i): pos for pos, i in enumerate(ds.indices)}
    missing = [int(i) for i in index if int(i) not in where]
    if missing:
        raise ValueError(
            f"conditions index {missing[:5]} not in the {split} split of {datamodule.root}"
        )
    return default_collate([ds[where[int(i)]] for i in index])


@torch.no_grad()
def score_generated(directory, datamodule, parser, classifier, p, device="cpu") -> dict:
    """Score a generated folder: the three rows, with the extractors and settings named. The
    evaluators and feature extractors run on `device`."""
    fid_feature, is_feature, inception_name = check_protocol(p)
    images, cond, meta = read_generated(directory)
    parser = parser.to(device) if parser is not None else None
    classifier = classifier.to(device)
    names = list(datamodule.attr_names)
    if meta["attr_names"] != names:
        raise ValueError(
            f"{directory}: generated for attributes {meta['attr_names']}, the data has {names}"
        )
    if "mask" in cond and cond["mask"].shape[-1] != datamodule.resolution:
        raise ValueError(
            f"{directory}: {cond['mask'].shape[-1]} px, the data is {datamodule.resolution} px"
        )
    first = cond["sample"] == 0
    main = {k: v[first] for k, v in cond.items()}
    fake = to_float(images[first])
    ref = reference_items(datamodule, meta["split"], main["index"])
    real = ref["image"]
    own = score(fake, main, parser, classifier, names)
    rows = {
        REAL: score(real, ref, parser, classifier, names),
        OWN: own,
        SHUFFLED: score(fake, roll(main), parser, classifier, names),
    }
    kid_n = p["kid_subset_size"]
    domain = DomainFeatures(classifier)
    rounds = p.get("bootstrap_rounds", 0)
    d = feature_distances(real, fake, domain, kid_n, p["batch_size"], device, rounds)
    own.update({k.replace("fid", "fid_domain", 1): v for k, v in d.items() if "fid" in k})
    own.update({"kid_domain": d["kid"], "kid_domain_std": d["kid_std"]})
    if fid_feature is not None:
        d = feature_distances(real, fake, fid_feature, kid_n, p["batch_size"], device, rounds)
        own.update(d)
    if is_feature is not None:
        own.update(inception_score(fake, is_feature, batch_size=p["batch_size"], device=device))
    groups = _groups(images, cond)
    if groups is not None:
        if p["diversity"] == "lpips":
            own["diversity"] = lpips_diversity(to_float(groups), p["lpips_net"], device)
        else:
            own["diversity"] = feature_diversity(to_float(groups), classifier)
    if groups is None:
        diversity_name = "not computed (one sample per condition)"
    else:
        diversity_name = DIVERSITY[p["diversity"]].format(net=p["lpips_net"])
    if is_feature is not None:
        is_name = inception_name
    else:
        why = "this Inception has no logits" if inception_name else "no Inception"
        is_name = f"not computed ({why})"
    return {
        "num_samples": int(first.sum()),
        "diversity_groups": None if groups is None else list(groups.shape[:2]),
        "attributes": names,
        "rows": rows,
        "generated": meta | {"dir": str(directory)},
        "extractors": {
            "fid_domain": DomainFeatures.name,
            "fid": inception_name or "not computed (evaluation.inception=null)",
            "is": is_name,
            "diversity": diversity_name,
            "resize": "none for the domain extractor (training resolution); Inception: bilinear "
            "to 299x299",
        },
    }


DIVERSITY = {
    "feature": "feature diversity: LPIPS-style distance on the attribute classifier's ResNet "
    "stages (unit-normalised channels, uniform weights), mean over all pairs of samples of one "
    "condition; not comparable with LPIPS",
    "lpips": "LPIPS ({net}, torchmetrics), mean over all pairs of samples of one condition",
}


def check_protocol(p) -> tuple:
    """Fail before any sampling on an option the scoring would reject; returns the Inception
    extractor's (fid_feature, is_feature, name) as `extractors.inception` does."""
    from facediff.diffusion.sampling import check_sampling_options

    if p["diversity"] not in DIVERSITY:
        raise ValueError(
            f"evaluation.diversity={p['diversity']!r}: expected one of {list(DIVERSITY)}"
        )
    for key, low in (
        ("num_conditions", 1),
        ("batch_size", 1),
        ("samples_per_condition", 1),
        ("diversity_conditions", 0),
        ("kid_subset_size", 2),
        ("parser_steps", 1),
        ("classifier_steps", 1),
    ):
        v = p[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"evaluation.{key}={v!r}: expected an integer >= {low}")
    if not isinstance(p.get("flip_check", False), bool):
        raise ValueError(f"evaluation.flip_check={p['flip_check']!r}: expected true or false")
    if p["kid_subset_size"] > p["num_conditions"]:
        raise ValueError(
            f"evaluation.kid_subset_size={p['kid_subset_size']} exceeds the "
            f"evaluation.num_conditions={p['num_conditions']} samples KID is computed on"
        )
    try:
        check_sampling_options(p["num_steps"], p["eta"], p["guidance_scale"])
        if p.get("sampler"):
            sampler_option(p["sampler"])
    except ValueError as e:
        raise ValueError(f"evaluation.{e}") from None
    return inception(p["inception"])  # a missing or unreadable Inception file: its error now


def _groups(images: torch.Tensor, cond: dict) -> torch.Tensor | None:
    """(C, K, 3, H, W): the conditions with the most samples, K of each (None if K < 2)."""
    counts = torch.bincount(cond["sample"])
    k = int((counts > 0).sum())
    if k < 2:
        return None
    have_k = torch.unique(cond["index"][cond["sample"] == k - 1])
    out = []
    for idx in have_k:
        rows = torch.nonzero((cond["index"] == idx) & (cond["sample"] < k)).flatten()
        rows = rows[torch.argsort(cond["sample"][rows])]
        out.append(images[rows[:k]])
    return torch.stack(out)


def evaluate_model(
    model, datamodule, p, out_dir, precision=None, extra: dict | None = None
) -> tuple[dict, str]:
    """The whole protocol (one variant of it: protocol_variants) for a model: evaluators,
    samples (written under out_dir/generated), scores, metrics.json (with `extra`) and
    report.md. Returns (report, table)."""
    if p.get("variants"):
        raise ValueError("evaluate_model runs one protocol: give each of protocol_variants(p)")
    p = {k: v for k, v in p.items() if k != "variants"}
    check_protocol(p)
    parser, classifier = protocol_evaluators(datamodule, p)
    own_sampler = model.sampler  # evaluation.sampler switches it for this protocol only
    try:
        gen_dir = sample_for_protocol(model, datamodule, p, Path(out_dir) / "generated")
        report = score_generated(gen_dir, datamodule, parser, classifier, p, model.device)
        if p.get("flip_check"):  # the control flag's effect (facediff.evaluation.flip)
            report["flip"] = flip_check(model, datamodule, parser, classifier, p)
    finally:
        model.sampler = own_sampler
    if precision is None and getattr(model, "build_config", None):
        precision = training_precision(model.build_config)
    table = write_report(
        report, out_dir, {"protocol": dict(p), "precision": precision} | (extra or {})
    )
    return report, table


VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def protocol_variants(p: dict) -> list[tuple[str | None, dict, dict]]:
    """The protocols one evaluation runs, as (name, protocol, options): [(None, p, {})]
    without `evaluation.variants`, else one per variant, its options over the others. A
    variant changes evaluation options only (eta, solver, num_steps, guidance_scale, ...), so
    one trained model is evaluated several ways instead of trained once per way; each variant
    is written to <out>/<name>/ and facediff-report makes it a row of its own. Every protocol
    is checked (check_protocol) before anything is sampled."""
    variants = p.get("variants") or {}
    base = {k: v for k, v in p.items() if k != "variants"}
    if not isinstance(variants, dict):
        raise ValueError(
            f"evaluation.variants={variants!r}: expected a mapping name -> {{option: value}}, "
            "e.g. {d: {eta: 0.0}, s: {eta: 1.0}}"
        )
    out = []
    for name, options in variants.items():
        where = f"evaluation.variants.{name}"
        if not VARIANT_NAME.fullmatch(str(name)):
            raise ValueError(f"{where}: a variant's name is a folder name (letters, digits, _.-)")
        if not isinstance(options, dict) or not options:
            raise ValueError(
                f"{where}={options!r}: expected a mapping of evaluation options, e.g. {{eta: 1.0}}"
            )
        unknown = sorted(set(options) - set(base))
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {unknown}; one of {sorted(base)}")
        protocol = base | options
        try:
            check_protocol(protocol)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        out.append((str(name), protocol, dict(options)))
    if not out:
        check_protocol(base)
    return out or [(None, base, {})]


def evaluate_variants(model, datamodule, protocols, out_dir, precision=None, extra=None):
    """Each protocol of protocol_variants(p) on one model (evaluate_model), into
    out_dir/[<variant>/], its metrics.json naming the variant; yields (name, options, report,
    table, folder) as each finishes: facediff-train's evaluate_after and facediff-evaluate."""
    for name, protocol, options in protocols:
        out = Path(out_dir) / (name or "")
        more = dict(extra or {}) | (
            {"variant": {"name": name, "options": options}} if name else {}
        )
        report, table = evaluate_model(model, datamodule, protocol, out, precision, more)
        yield name, options, report, table, out


def evaluate_after(cfg, model, datamodule, trainer) -> dict:
    """The evaluation protocol (cfg.evaluation) on the final model of a training run, once per
    variant (evaluation.variants) if it has any; prints the tables, and writes the precision
    the model trained in to metrics.json. Returns the rows, or {variant: rows}."""
    protocols = protocol_variants(OmegaConf.to_container(cfg.evaluation, resolve=True))
    results = {}
    out_dir = Path(cfg.paths.output_dir) / "evaluation"
    for name, options, report, table, out in evaluate_variants(
        model, datamodule, protocols, out_dir, training_precision(cfg)
    ):
        log_table_to_loggers(trainer.loggers, report["rows"], trainer.global_step, name)
        gen = report["generated"]
        print(
            f"\nevaluation{f' {name} ({options})' if name else ''} of {report['num_samples']} "
            f"samples at step {trainer.global_step} (EMA {gen['use_ema']}, {gen['sampler']} "
            f"{gen['num_steps']} steps, eta {gen['eta']}, guidance {gen['guidance_scale']}; "
            f"{out / 'metrics.json'}):\n{table}\n"
            + "".join(f"  {k}: {v}\n" for k, v in report["extractors"].items())
            + (flip_lines(report["flip"]) if "flip" in report else "")
        )
        results[name] = report["rows"]
    return results if protocols[0][0] else results[None]


def training_precision(config) -> dict:
    """{training, reason, sampling} for metrics.json, from a run's (resolved) config."""
    trainer = config.get("trainer") or {}
    return {
        "training": trainer.get("precision"),
        "reason": config.get("precision_reason"),
        "sampling": "32-true (samples and scores are computed in fp32)",
    }
