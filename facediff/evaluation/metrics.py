"""Fidelity metrics on generated faces, through torchmetrics.

- mask pixel accuracy and mIoU of a face parser's labels against the conditioning masks
  (MulticlassAccuracy micro, MulticlassJaccardIndex macro over the classes present);
- attribute accuracy of a classifier against the conditioning attributes, per attribute and
  mean, only where the condition is known.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from facediff.data.labels import NUM_MASK_CLASSES
from facediff.data.transforms import to_uint8

# torchvision's ImageNet weights the LPIPS backbones load (torch hub cache file names)
LPIPS_BACKBONES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


def mask_scores(pred: Tensor, target: Tensor, num_classes: int = NUM_MASK_CLASSES) -> dict:
    """pred, target: int64 (B, H, W) label maps. mIoU averages the classes that occur in the
    target or the prediction (absent-in-both classes are ignored, as face-parsing papers do)."""
    acc = MulticlassAccuracy(num_classes, average="micro")(pred.flatten(), target.flatten())
    jac = MulticlassJaccardIndex(num_classes, average="none")(pred.flatten(), target.flatten())
    present = (
        torch.bincount(torch.cat([pred.flatten(), target.flatten()]), minlength=num_classes) > 0
    )
    return {"mask_acc": float(acc), "miou": float(jac[present].mean())}


def attribute_scores(pred: Tensor, target: Tensor, known: Tensor, names: list[str]) -> dict:
    """pred: (B, A) predicted 0/1; target: (B, A) 0/1; known: (B, A) bool."""
    correct = (pred.float() == target.float()) & known
    per = correct.sum(0).float() / known.sum(0).clamp(min=1)
    has = known.any(0)
    per_attr = {n: float(per[i]) for i, n in enumerate(names) if has[i]}
    return {
        "attr_acc": float(per[has].mean()) if has.any() else float("nan"),
        "attr_acc_per_attribute": per_attr,
    }


def _batches(x: Tensor, size: int):
    return (x[i : i + size] for i in range(0, len(x), size))


class _Memo(torch.nn.Module):
    """Features of the last batch kept, so FID and KID updated with the same tensor run the
    extractor once."""

    def __init__(self, extractor):
        super().__init__()
        self.extractor = extractor
        self.num_features = getattr(extractor, "num_features", None)
        self._last = (None, None)

    def forward(self, x):
        if self._last[0] is not x:
            self._last = (x, self.extractor(x))
        return self._last[1]


@torch.no_grad()
def feature_distances(
    real: Tensor,
    fake: Tensor,
    feature,
    kid_subset_size: int = 50,
    batch_size: int = 64,
    device="cpu",
    bootstrap_rounds: int = 0,
) -> dict:
    """FID and KID (torchmetrics) between real and generated images in [-1, 1].

    feature: a module mapping uint8 images to (B, D) features (see `extractors`), or a dict of
    keyword arguments for torchmetrics (its own Inception). KID uses subsets of
    min(kid_subset_size, n) images, drawn with a fixed seed; FID on fewer images than feature
    dimensions is biased upwards (compare FIDs only at equal n). `bootstrap_rounds` > 0 adds
    `fid_ci_low` / `fid_ci_high`, the 95% bootstrap interval over the generated samples
    (`facediff.evaluation.statistics.bootstrap_fid`), from the same features."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    if isinstance(feature, dict) and isinstance(feature.get("feature"), torch.nn.Module):
        feature = feature["feature"]  # a network of ours (a TorchScript Inception)
    subset = min(kid_subset_size, len(real), len(fake))
    if isinstance(feature, dict):  # torchmetrics' own Inception (torch-fidelity's weights)
        fid = FrechetInceptionDistance(**feature).to(device)
        memo = _Memo(fid.inception)  # FID's features, kept for the bootstrap
        fid.inception = memo
        kid = KernelInceptionDistance(**feature, subset_size=subset).to(device)
    else:  # one extractor run per batch for FID and KID both
        memo = _Memo(feature)
        fid = FrechetInceptionDistance(feature=memo).to(device)
        kid = KernelInceptionDistance(feature=memo, subset_size=subset).to(device)
    feats: dict[bool, list] = {True: [], False: []}
    for images, is_real in ((real, True), (fake, False)):
        for b in _batches(images, batch_size):
            x = to_uint8(b).to(device)
            fid.update(x, real=is_real)
            kid.update(x, real=is_real)
            feats[is_real].append(memo._last[1].double().cpu())
    with torch.random.fork_rng(devices=[]):  # KID's random subsets: the same on every run
        torch.manual_seed(0)
        kid_mean, kid_std = kid.compute()
    out = {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std)}
    if bootstrap_rounds > 0:
        from facediff.evaluation.statistics import bootstrap_fid

        boot = bootstrap_fid(
            torch.cat(feats[True]).numpy(), torch.cat(feats[False]).numpy(), bootstrap_rounds
        )
        out |= {"fid_ci_low": boot["ci_low"], "fid_ci_high": boot["ci_high"]}
        out["fid_boot_bias"] = boot["bias"]  # the resamples' mean above the estimate
    return out


@torch.no_grad()
def inception_score(
    fake: Tensor, feature: dict, splits: int = 10, batch_size: int = 64, device="cpu"
) -> dict:
    """Inception Score (torchmetrics) of generated images in [-1, 1]; `feature`: keyword
    arguments for torchmetrics' InceptionScore (a network with logits)."""
    from torchmetrics.image.inception import InceptionScore

    metric = InceptionScore(**feature, splits=min(splits, len(fake))).to(device)
    for b in _batches(fake, batch_size):
        metric.update(to_uint8(b).to(device))
    mean, std = metric.compute()
    return {"is": float(mean), "is_std": float(std)}


def _pairwise_mean(groups: Tensor, distance) -> float:
    """Mean of distance(a, b) over all unordered pairs of samples within each group.
    groups: (C, K, ...) with K >= 2 samples of each of C conditions."""
    c, k = groups.shape[:2]
    i, j = torch.triu_indices(k, k, offset=1)
    total = torch.cat([distance(g[i], g[j]) for g in groups])
    assert total.numel() == c * len(i)
    return float(total.mean())


@torch.no_grad()
def feature_diversity(groups: Tensor, classifier) -> float:
    """Diversity among samples of one condition, LPIPS-style on the attribute classifier:
    each ResNet stage's activations unit-normalised over channels, squared differences
    averaged over space, then over stages (uniform weights: LPIPS without its learned linear
    layers). groups: (C, K, 3, H, W) in [-1, 1]; returns the mean over all pairs."""

    dev = next(classifier.parameters()).device

    def distance(a, b):
        fa = classifier.stage_features(a.float().to(dev))
        fb = classifier.stage_features(b.float().to(dev))
        d = [
            ((F.normalize(x, dim=1) - F.normalize(y, dim=1)) ** 2).sum(1).mean((1, 2))
            for x, y in zip(fa, fb)
        ]
        return torch.stack(d).mean(0)

    return _pairwise_mean(groups, distance)


def lpips_backbone_file(net_type: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONES[net_type]


@torch.no_grad()
def lpips_diversity(groups: Tensor, net_type: str = "alex", device="cpu") -> float:
    """Mean pairwise LPIPS (torchmetrics) among samples of one condition. Needs torchvision
    and the ImageNet backbone in torch's hub cache; the error names the file otherwise."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        raise ImportError("diversity=lpips needs torchvision (pip install torchvision)")
    path = lpips_backbone_file(net_type)
    if not path.is_file():
        raise FileNotFoundError(
            f"diversity=lpips: the {net_type} backbone {path} is missing (torchvision's "
            "ImageNet weights; copy the file there, or use diversity=feature)"
        )
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    metric = LearnedPerceptualImagePatchSimilarity(net_type=net_type, reduction="none")
    metric = metric.to(device).eval()

    def distance(a, b):
        return metric(a.clamp(-1, 1).to(device), b.clamp(-1, 1).to(device)).flatten().cpu()

    return _pairwise_mean(groups, distance)
