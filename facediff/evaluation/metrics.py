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
    present = torch.bincount(torch.cat([pred.flatten(), target.flatten()]), minlength=num_classes) > 0
    return {"mask_acc": float(acc), "miou": float(jac[present].mean())}


def attribute_scores(pred: Tensor, target: Tensor, known: Tensor, names: list[str]) -> dict:
    """pred: (B, A) predicted 0/1; target: (B, A) 0/1; known: (B, A) bool."""
    correct = (pred.float() == target.float()) & known
    per = correct.sum(0).float() / known.sum(0).clamp(min=1)
    has = known.any(0)
    per_attr = {n: float(per[i]) for i, n in enumerate(names) if has[i]}
    return {"attr_acc": float(per[has].mean()) if has.any() else float("nan"),
            "attr_acc_per_attribute": per_attr}  # fmt: skip
