"""The flip check: does the control metadata's flip flag decide the layout, and only the layout?

Control metadata (arXiv 2411.03177) goes to the denoiser apart from the semantic conditions, so
that a flag the data pipeline set (here: the horizontal flip of the augmentation) can be chosen
at sampling. The check samples the protocol's first conditions twice with the same noise and
seeds, the flip flag 0 then 1 (every other condition kept), and reads both with the evaluators:

- the face parser's layout: pixel agreement of the flip-1 parse with the flip-0 parse mirrored
  (left/right classes swapped) against its agreement with the flip-0 parse as it is; and the
  horizontal centre of the face (the parsed face classes, 0 left .. 1 right) under each flag;
- the attribute classifier: the accuracy against the conditions under each flag and how often
  its predictions agree between the two samples of a pair.

The flag can only decide what the data ties to it: on left-right symmetric data (SynthFaces'
default) a flipped face is as likely as the face itself, the flag carries nothing and a
well-trained model ignores it; on data with a handedness (`data=synthfaces_chiral`) it decides
the side. "Flips the layout, not the attributes" reads: mirrored agreement well above
unmirrored, face centres on opposite sides, attribute accuracy equal under both flags.

`facediff.evaluation.protocol.flip_check` runs it with the protocol's sampling and evaluators
(`evaluation.flip_check=true`); this module holds what reads and prints it.
"""

from __future__ import annotations

import torch

from facediff.data.labels import MASK_CLASSES, flip_lut

FACE_CLASSES = ("skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "mouth")
FACE_CLASSES += ("u_lip", "l_lip", "l_ear", "r_ear")


def mirror(labels: torch.Tensor) -> torch.Tensor:
    """Label maps (B, H, W) flipped left-right with the left/right classes swapped."""
    return torch.from_numpy(flip_lut()).to(labels.device)[labels.flip(-1)]


def face_center_x(labels: torch.Tensor) -> torch.Tensor:
    """The horizontal centre (B,) of the face classes' pixels, 0 at the left edge, 1 right
    (0.5 where a map has no face pixel)."""
    face = torch.zeros_like(labels, dtype=torch.bool)
    for name in FACE_CLASSES:
        face |= labels == MASK_CLASSES.index(name)
    w = labels.shape[-1]
    x = (torch.arange(w, dtype=torch.float32, device=labels.device) + 0.5) / w
    count = face.sum((1, 2)).float()
    centre = (face.float() * x).sum((1, 2)) / count.clamp(min=1)
    return torch.where(count > 0, centre, torch.full_like(centre, 0.5))


def flip_lines(result: dict) -> str:
    """The flip check as the lines the evaluation prints under its table."""
    r = result
    return (
        f"flip check on {r['num_conditions']} conditions, same noise, flip flag 0 -> 1:\n"
        f"  layout: parser agreement with the flip-0 parse mirrored "
        f"{100 * r['layout_agreement_mirrored']:.1f} %, as it is "
        f"{100 * r['layout_agreement_unmirrored']:.1f} %; face centre x "
        f"{r['face_center_x_flip0']:.3f} -> {r['face_center_x_flip1']:.3f}\n"
        f"  attributes: accuracy {100 * r['attr_acc_flip0']:.1f} -> "
        f"{100 * r['attr_acc_flip1']:.1f}, "
        f"predictions agree on {100 * r['attr_agreement']:.1f} %\n"
    )


__all__ = ["FACE_CLASSES", "face_center_x", "flip_lines", "mirror"]
