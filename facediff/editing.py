"""Editing with a trained model (the papers' qualitative figures), all with the same noise:

- `swap_parts`: parts (hair, glasses, mouth, ...) of face B's mask put into face A's mask;
- `attribute_edits`: one attribute toggled at a time (rows: attributes, columns: off / on),
  optionally only inside a mask region: outside it, every step's noisy latent is replaced by
  the unedited run's at the same step (RePaint-style blending; the same noise and a
  deterministic solver make the two runs agree outside the region up to the edit's spill);
- `interpolate`: the condition embeddings of two attribute vectors mixed with weights alpha.

`FaceGenerator.swap`, `toggle` and `interpolate` (`facediff-sample mode=swap|attributes|interpolate`)
call these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from facediff.data.labels import MASK_CLASSES
from facediff.models.denoiser import Condition

# a removed part is filled with what lies under it: skin inside the face, background outside
INSIDE_FACE = ("nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "mouth", "u_lip", "l_lip")
PART_GROUPS = {  # names a user types for a part made of several classes
    "eyes": ("l_eye", "r_eye"),
    "brows": ("l_brow", "r_brow"),
    "ears": ("l_ear", "r_ear"),
    "lips": ("u_lip", "l_lip"),
    "mouth_all": ("mouth", "u_lip", "l_lip"),
    "glasses": ("eye_g",),
    "earrings": ("ear_r",),
    "necklace": ("neck_l",),
}


def part_classes(parts) -> list[int]:
    """Class ids of part names (MASK_CLASSES or PART_GROUPS), each checked."""
    if isinstance(parts, str):
        parts = [parts]
    ids = []
    for p in parts:
        names = PART_GROUPS.get(p, (p,))
        for n in names:
            if n not in MASK_CLASSES:
                raise ValueError(
                    f"parts: unknown part {p!r}; use mask classes {list(MASK_CLASSES)} or "
                    f"groups {list(PART_GROUPS)}"
                )
            ids.append(MASK_CLASSES.index(n))
    if not ids:
        raise ValueError("parts: name at least one part to swap")
    return ids


def swap_parts(mask_a: Tensor, mask_b: Tensor, parts) -> Tensor:
    """Mask A with the given parts taken from mask B: A's own pixels of those classes are
    filled (skin inside the face, background outside), then B's pixels of them painted."""
    if mask_a.shape != mask_b.shape:
        raise ValueError(f"swap: masks of {tuple(mask_a.shape)} and {tuple(mask_b.shape)}")
    ids = part_classes(parts)
    out = mask_a.clone()
    skin, background = MASK_CLASSES.index("skin"), MASK_CLASSES.index("background")
    for c in ids:
        out[mask_a == c] = skin if MASK_CLASSES[c] in INSIDE_FACE else background
    for c in ids:
        out[mask_b == c] = c
    return out


class RecordAndBlend:
    """The sampler's step hook for region edits: record the unedited run's latents, then put
    them back outside the region in the edited run."""

    def __init__(self, region: Tensor | None = None):
        self.region, self.path = region, []

    def record(self, i: int, t, zt: Tensor) -> Tensor:
        self.path.append(zt.clone())
        return zt

    def blend(self, i: int, t, zt: Tensor) -> Tensor:
        m = self.region.to(zt.device, zt.dtype)
        return m * zt + (1 - m) * self.path[i]


def region_map(mask: Tensor, classes, size) -> Tensor:
    """(B, 1, h, w) fraction of each latent pixel covered by the classes."""
    m = torch.isin(mask, torch.tensor(part_classes(classes), device=mask.device)).float()
    return F.interpolate(m[:, None], size=size, mode="area")


class Interpolated:
    """A conditioner whose condition is (1 - alpha) c(batch_a) + alpha c(batch_b), per sample
    (tokens and vectors mixed; spatial maps too): what the sampler calls to guide."""

    def __init__(self, conditioner, batch_b: dict, alpha: Tensor):
        self.conditioner, self.batch_b, self.alpha = conditioner, batch_b, alpha

    @property
    def names(self):
        return self.conditioner.names

    def parameters(self):
        return self.conditioner.parameters()

    def __call__(self, batch, drop=None, spatial_size=None) -> Condition:
        a = self.conditioner(batch, drop=drop, spatial_size=spatial_size)
        b = self.conditioner(self.batch_b, drop=drop, spatial_size=spatial_size)

        def mix(x, y):
            if x is None:
                return None
            w = self.alpha.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))
            return (1 - w) * x + w * y

        return Condition(
            mix(a.tokens, b.tokens),
            a.token_mask,
            mix(a.vector, b.vector),
            mix(a.spatial, b.spatial),
            a.token_groups,
        )
