"""Evaluators facediff trains itself: an attribute classifier and a face parser.

Both are LightningModules on transformers backbones (ResNet, SegFormer), trained on a prepared
data set's train split; their scores on real validation images are the "ground truth" row of
every evaluation table.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from transformers import (
    ResNetConfig,
    ResNetModel,
    SegformerConfig,
    SegformerForSemanticSegmentation,
)

from facediff.data.labels import NUM_MASK_CLASSES
from facediff.precision import guard_strided_convs


class AttributeClassifier(L.LightningModule):
    """Multi-label attribute classifier: ResNet (ResNet-18 with the defaults, random init, or
    `pretrained`: a local transformers ResNet folder to fine-tune, as the CVIU paper fine-tuned
    an ImageNet ResNet-18) + linear head, BCE on the known attributes only. `features(x)` gives the penultimate features (a domain
    feature extractor for FID/KID)."""

    def __init__(
        self,
        num_attributes: int,
        widths: tuple[int, ...] = (64, 128, 256, 512),
        depths: tuple[int, ...] = (2, 2, 2, 2),
        lr: float = 1e-3,
        pretrained: str | None = None,
    ):
        super().__init__()
        widths, depths = tuple(widths), tuple(depths)  # plain tuples: safe to load (weights_only)
        self.save_hyperparameters()
        if pretrained:  # a local transformers ResNet folder (e.g. microsoft/resnet-18 saved)
            from facediff.models.pretrained import from_pretrained

            self.backbone = from_pretrained(ResNetModel, pretrained, "model.pretrained")
            widths = tuple(self.backbone.config.hidden_sizes)
        else:
            self.backbone = ResNetModel(
                ResNetConfig(
                    num_channels=3,
                    embedding_size=widths[0],
                    hidden_sizes=list(widths),
                    depths=list(depths),
                    layer_type="basic",
                )
            )
        self.head = torch.nn.Linear(widths[-1], num_attributes)
        self.num_features = widths[-1]
        self.data_info: dict | None = None  # set by facediff-train: the attribute names
        self.attr_names: list[str] | None = None
        guard_strided_convs(self)

    def on_fit_start(self) -> None:
        if self.data_info:
            self.attr_names = list(self.data_info["attr_names"])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["attr_names"] = self.attr_names

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.attr_names = checkpoint.get("attr_names")

    def columns(self, names: list[str], where: str = "the attribute classifier") -> list[int]:
        """Output columns of these attribute names (the classifier may know more)."""
        if not self.attr_names:
            raise ValueError(
                f"{where}: holds no attribute names (not written by facediff-train "
                "experiment=eval_classifier of this version); delete it to train it again"
            )
        known = self.attr_names
        missing = [n for n in names if n not in known]
        if missing:
            raise ValueError(f"{where}: not trained on {missing}; delete it to train it again")
        return [known.index(n) for n in names]

    def features(self, x):
        return self.backbone(x).pooler_output.flatten(1)  # (B, C)

    def stage_features(self, x) -> tuple:
        """Activations after the stem and after each ResNet stage (feature diversity)."""
        return self.backbone(x, output_hidden_states=True).hidden_states

    def forward(self, x):
        return self.head(self.features(x))  # logits (B, A)

    def training_step(self, batch, batch_idx):
        loss = self._loss(self(batch["image"]), batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _loss(self, logits, batch):
        known = batch["attrs_known"].float()
        bce = F.binary_cross_entropy_with_logits(logits, batch["attrs"], reduction="none")
        return (bce * known).sum() / known.sum().clamp(min=1)

    def validation_step(self, batch, batch_idx):
        logits = self(batch["image"])
        known = batch["attrs_known"]
        acc = ((logits > 0) == batch["attrs"].bool()) & known
        self.log("val/loss", self._loss(logits, batch))
        self.log("val/attr_acc", acc.sum() / known.sum().clamp(min=1), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


class FaceParser(L.LightningModule):
    """The mask parser (the data set's classes, `num_labels`: 19 for faces, 24 for
    DeepFashion): SegFormer (transformers) with random init, or from a local folder
    (`pretrained`: the encoder's weights, a new head; the size options are then unused).
    `strides` (2, 2, 2, 2) keeps small images' detail (logits at half resolution).

    The loss is cross-entropy plus `dice_weight` times the soft Dice loss over the classes
    present in the batch: cross-entropy alone is ruled by background, skin and hair and learns
    the parts of a few pixels (eyes, brows, lips at 64 px) last; Dice weighs every class alike."""

    requires = frozenset({"mask"})  # the data module must provide masks

    def __init__(
        self,
        hidden_sizes: tuple[int, ...] = (32, 64, 160, 256),
        depths: tuple[int, ...] = (2, 2, 2, 2),
        strides: tuple[int, ...] = (4, 2, 2, 2),
        sr_ratios: tuple[int, ...] = (8, 4, 2, 1),
        decoder_hidden_size: int = 256,
        lr: float = 1e-3,
        pretrained: str | None = None,
        num_labels: int = NUM_MASK_CLASSES,
        dice_weight: float = 0.0,
    ):
        super().__init__()
        hidden_sizes, depths, strides, sr_ratios = (  # plain tuples: safe to load (weights_only)
            tuple(hidden_sizes),
            tuple(depths),
            tuple(strides),
            tuple(sr_ratios),
        )
        self.save_hyperparameters()
        if pretrained:  # a local SegFormer folder (e.g. nvidia/mit-b0 saved), 19-class head new
            from facediff.models.pretrained import from_pretrained

            self.segformer = from_pretrained(
                SegformerForSemanticSegmentation,
                pretrained,
                "model.pretrained",
                num_labels=num_labels,
                ignore_mismatched_sizes=True,
            )
            guard_strided_convs(self)
            return
        n = len(hidden_sizes)
        config = SegformerConfig(
            num_channels=3,
            num_labels=num_labels,
            num_encoder_blocks=n,
            hidden_sizes=list(hidden_sizes),
            depths=list(depths),
            strides=list(strides),
            patch_sizes=[max(3, s + 1 + s % 2) for s in strides],
            sr_ratios=list(sr_ratios),
            num_attention_heads=[1, 2, 5, 8][:n],
            decoder_hidden_size=decoder_hidden_size,
        )
        self.segformer = SegformerForSemanticSegmentation(config)
        guard_strided_convs(self)

    def forward(self, x):
        logits = self.segformer(pixel_values=x).logits
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def parse(self, x):
        return self(x).argmax(1)  # (B, H, W)

    def training_step(self, batch, batch_idx):
        image, mask = batch["image"], batch["mask"]
        logits = self(image)
        loss = F.cross_entropy(logits, mask)
        if self.hparams.get("dice_weight"):
            dice = soft_dice_loss(logits, mask)
            self.log("train/dice", dice)
            loss = loss + self.hparams.dice_weight * dice
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        logits = self(batch["image"])
        self.log("val/loss", F.cross_entropy(logits, batch["mask"]))
        self.log(
            "val/pixel_acc", (logits.argmax(1) == batch["mask"]).float().mean(), prog_bar=True
        )

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - the mean soft Dice coefficient (Milletari et al. 2016) of softmax(logits)
    (B, C, H, W) against the labels (B, H, W), over the classes present in the batch's labels;
    each class's sums run over the whole batch. `eps` smooths the ratio."""
    prob = logits.float().softmax(1)
    onehot = F.one_hot(target, prob.shape[1]).permute(0, 3, 1, 2).to(prob.dtype)
    inter = (prob * onehot).sum((0, 2, 3))
    truth = onehot.sum((0, 2, 3))
    dice = (2 * inter + eps) / (prob.sum((0, 2, 3)) + truth + eps)
    return 1 - dice[truth > 0].mean()


__all__ = ["AttributeClassifier", "FaceParser", "soft_dice_loss"]
