"""Fidelity metrics on generated faces, through torchmetrics.

- mask pixel accuracy and mIoU of a face parser's labels against the conditioning masks
  (MulticlassAccuracy micro, MulticlassJaccardIndex macro over the classes present);
- attribute accuracy of a classifier against the conditioning attributes, per attribute and
  mean, only where the condition is known.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from facediff.data.labels import NUM_MASK_CLASSES


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


class _DomainFeatures(torch.nn.Module):
    """uint8 images -> the attribute classifier's penultimate features (a domain extractor)."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    def forward(self, x):
        return self.classifier.features(x.float() / 127.5 - 1)


def _to_uint8(x: Tensor) -> Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def feature_distances(real: Tensor, fake: Tensor, classifier, kid_subset_size: int = 50) -> dict:
    """FID and KID (torchmetrics) between real and generated images in [-1, 1], on the attribute
    classifier's features. Marked with * in tables: not comparable with Inception FIDs."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    extractor = _DomainFeatures(classifier.float().cpu().eval())
    fid = FrechetInceptionDistance(feature=extractor)
    kid = KernelInceptionDistance(
        feature=extractor, subset_size=min(kid_subset_size, len(real), len(fake))
    )
    with torch.no_grad():
        for metric in (fid, kid):
            metric.update(_to_uint8(real), real=True)
            metric.update(_to_uint8(fake), real=False)
        kid_mean, _ = kid.compute()
        return {"fid": float(fid.compute()), "kid": float(kid_mean)}
