import math

import pytest
import torch

from facediff.diffusion.losses import info_nce
from facediff.models.conditioning import (
    AttributeEncoder,
    Conditioner,
    ControlEncoder,
    MaskConcatEncoder,
    MaskResNetEncoder,
    SegFormerMaskEncoder,
)


def batch(b=3, a=5, s=32):
    g = torch.Generator().manual_seed(0)
    return {
        "attrs": torch.randint(0, 2, (b, a), generator=g).float(),
        "attrs_known": torch.rand(b, a, generator=g) > 0.2,
        "mask": torch.randint(0, 19, (b, s, s), generator=g),
        "control": torch.rand(b, 7, generator=g),
    }


ENCODERS = {
    "attr_mlp": (lambda: AttributeEncoder(5, 16, hidden=8), (3, 1, 16)),
    "attr_tokens": (lambda: AttributeEncoder(5, 16, per_attribute_tokens=True), (3, 5, 16)),
    "mask_pooled": (lambda: MaskResNetEncoder(16, pooled=True, widths=(8, 8, 16, 16)), (3, 1, 16)),
    "mask_spatial": (lambda: MaskResNetEncoder(16, grid=4, widths=(8, 8, 16, 16)), (3, 16, 16)),
    "segformer": (lambda: SegFormerMaskEncoder(16, grid=4, hidden_sizes=(8, 16)), (3, 16, 16)),
    "mask_concat": (lambda: MaskConcatEncoder(), (3, 19, 8, 8)),
    "mask_embed": (lambda: MaskConcatEncoder(channels=4), (3, 4, 8, 8)),
    "control": (lambda: ControlEncoder(7, 12), (3, 12)),
}


@pytest.mark.parametrize("name", list(ENCODERS))
def test_encoder_shape_null_and_backward(name):
    make, shape = ENCODERS[name]
    enc = make()
    b = batch()
    drop = torch.tensor([False, True, False])
    out = enc(b, drop, spatial_size=(8, 8))
    assert out.shape == shape
    null = enc.null(3, (8, 8))
    assert torch.equal(out[1], null[1].to(out.dtype))  # dropped sample = learned null
    assert not torch.equal(out[0], null[0].to(out.dtype))
    out.square().mean().backward()
    assert all(p.grad is not None for p in enc.parameters() if p.requires_grad)


def test_attribute_null_differs_from_all_negative():
    enc = AttributeEncoder(5, 16, hidden=8)
    b = batch()
    b["attrs"][:] = 0
    b["attrs_known"][:] = True
    neg = enc(b, torch.zeros(3, dtype=torch.bool))
    null = enc(b, torch.ones(3, dtype=torch.bool))
    assert not torch.allclose(neg, null)


def test_unknown_is_distinct_from_negative():
    enc = AttributeEncoder(5, 16, per_attribute_tokens=True)
    b = batch()
    b["attrs"][:] = 0
    b["attrs_known"][:] = True
    neg = enc.encode(b, None)
    b["attrs_known"][:] = False
    unk = enc.encode(b, None)
    assert not torch.allclose(neg, unk)


def test_conditioner_concatenates_and_adds_null_token_when_needed():
    cond = Conditioner(
        {
            "attrs": AttributeEncoder(5, 16, hidden=8),
            "mask": MaskResNetEncoder(16, grid=2, widths=(8, 8, 8, 8)),
            "spatial": MaskConcatEncoder(),
            "control": ControlEncoder(7, 12),
        },
        dim=16,
    )
    c = cond(batch(), spatial_size=(8, 8))
    assert c.tokens.shape == (3, 1 + 4, 16) and c.token_mask.all()
    assert c.spatial.shape == (3, 19, 8, 8) and c.vector.shape == (3, 12)
    assert cond.names == ["attrs", "mask", "spatial", "control"]
    uncond = Conditioner({}, dim=16)
    assert uncond.names == [] and uncond(batch()).tokens.shape == (3, 1, 16)
    only_spatial = Conditioner({"mask": MaskConcatEncoder()}, dim=16)
    assert only_spatial(batch(), spatial_size=(4, 4)).tokens.shape == (3, 1, 16)


def test_mask_concat_is_area_fraction_of_one_hot():
    mask = torch.zeros(1, 4, 4, dtype=torch.long)
    mask[0, :2, :2] = 13  # hair in the top-left quarter
    out = MaskConcatEncoder().encode({"mask": mask}, (2, 2))
    assert out[0, 13, 0, 0] == 1 and out[0, 13, 1, 1] == 0 and out[0, 0, 1, 1] == 1
    assert torch.allclose(out.sum(1), torch.ones(1, 2, 2))


def info_nce_by_hand(e, a, tau, thr):
    """Loop version: positives j != i with attribute cosine > thr; skip anchors without."""
    n, losses = len(e), []
    for i in range(n):
        sims = {j: float(torch.cosine_similarity(e[i], e[j], 0)) / tau for j in range(n) if j != i}
        pos = [j for j in sims if float(torch.cosine_similarity(a[i], a[j], 0)) > thr]
        if not pos:
            continue
        num = sum(math.exp(sims[j]) for j in pos)
        den = sum(math.exp(s) for s in sims.values())
        losses.append(-math.log(num / den))
    return sum(losses) / len(losses) if losses else 0.0


def test_info_nce_matches_hand_computation():
    g = torch.Generator().manual_seed(1)
    e = torch.randn(6, 8, generator=g)
    a = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1], [0, 0, 1], [1, 0, 1], [1, 1, 1.0]])
    got = info_nce(e, a, tau=0.5, threshold=0.8)
    assert got.item() == pytest.approx(info_nce_by_hand(e, a, 0.5, 0.8), rel=1e-5)
    # no anchor has a positive -> 0, and the diagonal alone never counts as one
    assert info_nce(e[:1], a[:1]).item() == 0.0


def test_cosine_vector_schedule_phases_control_in_over_the_noise_level():
    from facediff.models.denoiser import vector_schedule

    t = torch.tensor([0, 250, 500, 750, 1000])
    w = vector_schedule(t, "cosine")
    assert w.tolist() == pytest.approx([0.0, 0.1464466, 0.5, 0.8535534, 1.0], abs=1e-6)
    assert torch.equal(vector_schedule(t, "constant"), torch.ones(5))
    with pytest.raises(ValueError, match="denoiser.vector_schedule='linear': expected one of"):
        vector_schedule(t, "linear")


@pytest.mark.parametrize("family", ["unet", "dit"])
def test_scheduled_control_has_no_effect_on_clean_inputs_and_full_effect_on_noise(family):
    from facediff.models.denoiser import Condition
    from facediff.models.dit import DiT
    from facediff.models.unet import UNet

    torch.manual_seed(0)
    if family == "unet":
        den = UNet(
            8, 3, block_out_channels=(16, 32), layers_per_block=1, attention_levels=(False, True),
            cross_attention_dim=16, head_dim=8, norm_num_groups=8, vector_dim=5,
            vector_schedule="cosine",
        )  # fmt: skip
    else:
        den = DiT(
            8, 3, hidden_size=16, depth=1, num_heads=2, cross_attention_dim=16, vector_dim=5,
            vector_schedule="cosine",
        )  # fmt: skip
        for m in [den.proj_out, den.out_modulation, den.blocks[0].norm1.linear]:
            torch.nn.init.normal_(m.weight, std=0.1)
    x = torch.randn(1, 3, 8, 8)
    tokens = torch.randn(1, 2, 16)

    def run(t, vector):
        cond = Condition(tokens, torch.ones(1, 2, dtype=torch.bool), vector=vector)
        return den(x, torch.tensor([t]), cond)

    a, b = torch.zeros(1, 5), torch.ones(1, 5) * 3
    assert torch.equal(run(0, a), run(0, b))  # clean: the control is phased out
    assert not torch.allclose(run(999, a), run(999, b), atol=1e-4)  # noise: it acts
