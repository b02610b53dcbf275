"""Diffusion losses: per-sample MSE, SNR weightings and extra terms, as config options."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facediff.data.labels import MASK_CLASSES

# the MCLD-style region term's classes by default: the small regions a face is judged by
REGION_CLASSES = ("l_eye", "r_eye", "l_brow", "r_brow", "mouth", "u_lip", "l_lip")

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")


def snr_from_alphas(alphas_cumprod: Tensor) -> Tensor:
    """SNR(t) = alpha_bar_t / (1 - alpha_bar_t)."""
    return alphas_cumprod / (1 - alphas_cumprod)


def snr_from_flow_t(t: Tensor, eps: float = 1e-5) -> Tensor:
    """Rectified flow x_t = (1 - t) x0 + t eps: SNR(t) = ((1 - t) / t)^2 (t kept off 0 and 1)."""
    t = t.clamp(eps, 1 - eps)
    return ((1 - t) / t) ** 2


def target_factor(snr: Tensor, prediction_type: str) -> Tensor:
    """c^2 with eps_hat - eps = c (pred - target): an eps-space weight w(t) becomes
    w(t) c^2 on the model's own target (docs/references.md: P2), so every weighting means the same
    whatever the model predicts. epsilon: 1; v: snr / (snr + 1); x0 ("sample"): snr;
    flow (velocity eps - x0): (1 - t)^2 = snr / (1 + sqrt(snr))^2."""
    if prediction_type == "epsilon":
        return torch.ones_like(snr)
    if prediction_type == "v_prediction":
        return snr / (snr + 1)
    if prediction_type == "sample":
        return snr
    if prediction_type == "flow":
        return snr / (1 + snr.sqrt()) ** 2
    raise ValueError(
        f"prediction_type={prediction_type!r}: expected one of {list(PREDICTION_TYPES)}"
    )


class NoWeighting(nn.Module):
    """Weight 1 on the model's own target: the plain loss (eps, v, x0 or velocity MSE)."""

    eps_space = False  # not carried over: plain means plain on every target

    def forward(self, snr: Tensor) -> Tensor:
        return torch.ones_like(snr)


class P2Weighting(nn.Module):
    """P2 weighting, Choi et al. 2022 (arXiv 2204.00227): w(t) = 1 / (k + SNR(t))^gamma on the
    eps loss, carried over to v and flow by `target_factor`.

    Not normalised, as in the P2 authors' code; gamma = 0 gives the eps-equivalent loss (the
    plain loss for an eps model).
    """

    eps_space = True

    def __init__(self, gamma: float = 0.5, k: float = 1.0):
        super().__init__()
        if gamma < 0 or k <= 0:
            raise ValueError(f"loss.weighting: need gamma >= 0 and k > 0, got {gamma}, {k}")
        self.gamma, self.k = gamma, k

    def forward(self, snr: Tensor) -> Tensor:
        return (self.k + snr) ** -self.gamma


class MinSNRWeighting(nn.Module):
    """Min-SNR-gamma, Hang et al. 2023 (arXiv 2303.09556): min(snr, g) / snr on the eps loss,
    so min(snr, g) / (snr + 1) for v and t^2 min(snr, g) for flow through `target_factor`."""

    eps_space = True

    def __init__(self, gamma: float = 5.0):
        super().__init__()
        self.gamma = gamma

    def forward(self, snr: Tensor) -> Tensor:
        return snr.clamp(max=self.gamma) / snr


def loss_weight(weighting: nn.Module, snr: Tensor, prediction_type: str) -> Tensor:
    """The weighting's w(t) on the model's own target."""
    factor = target_factor(snr, prediction_type)  # also rejects an unknown prediction type
    w = weighting(snr)
    return w * factor if getattr(weighting, "eps_space", True) else w


class DiffusionLoss(nn.Module):
    """Per-sample loss = w(t) * mean((pred - target)^2) + optional terms; w(t) is the
    weighting's, on the target the model predicts (`loss_weight`).

    Args:
        weighting: NoWeighting, P2Weighting or MinSNRWeighting.
        region_weight: MCLD-style region term (docs/references.md: MCLD): adds
            region_weight * w(t) * mean(m * (pred - target)^2), m the `region_classes` of the mask
            at latent size (eyes, brows, lips and mouth by default); `region_classes` a list
            (weight 1 each) or {class: weight} (e.g. eyes and lips heavier than the nose); None:
            REGION_CLASSES. (null in conf/loss/p2.yaml, so that an experiment's {class: weight}
            or a command line's list replaces it instead of failing to merge with it.)
        infonce_weight: InfoNCE on the attribute embeddings (docs/references.md: InfoNCE), with `tau`
            and positive `threshold`; needs `attr_embeddings` in `extras`.
    """

    def __init__(
        self,
        weighting: nn.Module | None = None,
        region_weight: float = 0.0,
        region_classes: tuple[str, ...] | dict[str, float] | None = None,
        infonce_weight: float = 0.0,
        tau: float = 0.07,
        threshold: float = 0.8,
    ):
        super().__init__()
        self.weighting = weighting or NoWeighting()
        if region_classes is None:
            region_classes = REGION_CLASSES
        if not hasattr(region_classes, "items"):
            region_classes = {c: 1.0 for c in region_classes}
        unknown = [c for c in region_classes if c not in MASK_CLASSES]
        if unknown:
            raise ValueError(
                f"loss.region_classes: unknown {unknown}; valid: {list(MASK_CLASSES)}"
            )
        bad = {c: w for c, w in region_classes.items() if not 0 <= float(w) < float("inf")}
        if bad:
            raise ValueError(f"loss.region_classes: weights {bad} must be finite and >= 0")
        class_weights = torch.zeros(len(MASK_CLASSES))
        for c, w in region_classes.items():
            class_weights[MASK_CLASSES.index(c)] = float(w)
        self.region_weight = region_weight
        self.register_buffer("region_class_weights", class_weights, persistent=False)
        self.infonce_weight, self.tau, self.threshold = infonce_weight, tau, threshold

    @property
    def requires(self) -> set[str]:
        return {"mask"} if self.region_weight else set()

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        snr: Tensor,
        batch: dict,
        prediction_type: str = "epsilon",
        extras: dict | None = None,
    ) -> dict[str, Tensor]:
        """Returns {"loss": (B,) per-sample total, and each term (B,) or scalar for logging}."""
        w = loss_weight(self.weighting, snr.float(), prediction_type)  # (B,)
        se = (pred.float() - target.float()) ** 2  # (B, C, h, w)
        terms = {"mse": se.mean((1, 2, 3))}
        loss = w * terms["mse"]
        if self.region_weight:
            m = self.region_class_weights.to(se.device)[batch["mask"]]  # per-pixel class weight
            m = F.interpolate(m[:, None], size=se.shape[-2:], mode="area")  # (B, 1, h, w)
            terms["region"] = (se * m).mean((1, 2, 3))
            loss = loss + self.region_weight * w * terms["region"]
        if self.infonce_weight:
            emb = (extras or {}).get("attr_embeddings")
            if emb is None:
                raise ValueError("loss.infonce_weight > 0 needs an attribute encoder ('attrs')")
            terms["infonce"] = info_nce(emb, batch["attrs"], self.tau, self.threshold)
            loss = loss + self.infonce_weight * terms["infonce"]
        terms["loss"] = loss
        return terms


def info_nce(
    embeddings: Tensor, attrs: Tensor, tau: float = 0.07, threshold: float = 0.8
) -> Tensor:
    """InfoNCE over attribute embeddings (docs/references.md: InfoNCE), done right.

    Positives of anchor i: the other samples j != i whose attribute vectors have cosine
    similarity > `threshold`. loss_i = -log(sum_pos exp(s_ij) / sum_{j != i} exp(s_ij)),
    s_ij = cos(e_i, e_j) / tau; the diagonal is excluded and anchors with no positive are
    skipped. Returns the mean over anchors that have positives (0 if none has).
    """
    e = F.normalize(embeddings.flatten(1).float(), dim=-1)
    a = F.normalize(attrs.float(), dim=-1)
    s = e @ e.T / tau
    eye = torch.eye(len(e), dtype=torch.bool, device=e.device)
    pos = ((a @ a.T) > threshold) & ~eye
    s = s.masked_fill(eye, -math.inf)
    log_denominator = torch.logsumexp(s, dim=1)
    log_numerator = torch.logsumexp(s.masked_fill(~pos, -math.inf), dim=1)
    has_pos = pos.any(1)
    if not has_pos.any():
        return s.new_zeros(())
    return (log_denominator - log_numerator)[has_pos].mean()
