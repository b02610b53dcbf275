"""Stage routing (MCLD): which conditions each UNet stage attends to, in both forms."""

import numpy as np
import pytest
import torch

from facediff.models.conditioning import AttributeEncoder, Conditioner, MaskResNetEncoder
from facediff.models.unet import UNet

ROUTING = {"down": ["attrs"], "mid": ["attrs", "mask"], "up": ["mask"]}


def parts(form="concat", routing=None, lambda_kind="learned"):
    torch.manual_seed(0)
    unet = UNet(
        8, 3, block_out_channels=(16, 32), layers_per_block=1, attention_levels=(True, True),
        cross_attention_dim=16, head_dim=8, norm_num_groups=8, routing=routing or ROUTING,
        routing_form=form, routing_lambda=lambda_kind,
    )  # fmt: skip
    cond = Conditioner(
        {
            "attrs": AttributeEncoder(3, 16, hidden=8),
            "mask": MaskResNetEncoder(16, grid=2, widths=(8, 8), depths=(1, 1)),
        },
        16,
    )
    batch = {
        "attrs": torch.ones(2, 3),
        "attrs_known": torch.ones(2, 3, dtype=torch.bool),
        "mask": torch.randint(0, 19, (2, 8, 8)),
    }
    return unet, cond(batch, spatial_size=(8, 8))


def stage_outputs(unet, c):
    """The output of every down block, the middle block and every up block."""
    outs = {"down": [], "mid": [], "up": []}
    hooks = [
        b.register_forward_hook(lambda m, i, o: outs["down"].append(o[0]))
        for b in unet.unet.down_blocks
    ]
    hooks.append(unet.unet.mid_block.register_forward_hook(lambda m, i, o: outs["mid"].append(o)))
    hooks += [
        b.register_forward_hook(lambda m, i, o: outs["up"].append(o)) for b in unet.unet.up_blocks
    ]
    out = unet(torch.randn(2, 3, 8, 8), torch.tensor([10, 900]), c)
    for h in hooks:
        h.remove()
    return out, outs


@pytest.mark.parametrize("form", ["concat", "sum"])
def test_a_condition_routed_away_from_a_stage_gets_no_gradient_through_it(form):
    unet, c = parts(form)
    assert c.token_groups == {"attrs": (0, 1), "mask": (1, 5)}
    tokens = c.tokens.detach().requires_grad_(True)
    c.tokens = tokens
    out, outs = stage_outputs(unet, c)
    assert out.shape == (2, 3, 8, 8)
    grad = lambda y: torch.autograd.grad(y.square().sum(), tokens, retain_graph=True)[0]  # noqa: E731
    g_down = grad(sum(o.square().sum() for o in outs["down"]))
    assert torch.equal(g_down[:, 1:], torch.zeros_like(g_down[:, 1:]))  # mask: not in down
    assert g_down[:, :1].abs().sum() > 0  # attrs: in down
    g_mid = grad(outs["mid"][0])
    assert g_mid[:, :1].abs().sum() > 0 and g_mid[:, 1:].abs().sum() > 0
    g_all = grad(out)  # the mask still reaches the output, through mid and up
    assert g_all[:, 1:].abs().sum() > 0


def test_sum_form_has_a_projection_and_a_lambda_per_condition():
    unet, c = parts("sum")
    procs = {n: p for n, p in unet.unet.attn_processors.items() if ".attn2." in n}
    mid = next(p for n, p in procs.items() if n.startswith("mid_block"))
    assert mid.names == ["attrs", "mask"] and len(mid.to_k) == 1
    assert isinstance(mid.lambdas, torch.nn.Parameter) and mid.lambdas.tolist() == [1.0, 1.0]
    names = dict(unet.named_parameters())
    assert any(k.endswith("attn2.processor.lambdas") for k in names)  # trained and saved
    fixed, _ = parts("sum", lambda_kind="fixed")
    mid_fixed = next(
        p
        for n, p in fixed.unet.attn_processors.items()
        if n.startswith("mid_block") and ".attn2." in n
    )
    assert not isinstance(mid_fixed.lambdas, torch.nn.Parameter)
    # lambda weighs its condition: mask's lambda 0 in every layer = the mask ignored there
    out, _ = stage_outputs(unet, c)
    for p in procs.values():
        if "mask" in p.names:
            p.lambdas.data[p.names.index("mask")] = 0.0
    c2 = type(c)(**{**c.__dict__, "tokens": c.tokens.clone()})
    c2.tokens[:, 1:] = 5.0
    torch.manual_seed(1)
    a, _ = stage_outputs(unet, c)
    torch.manual_seed(1)
    b, _ = stage_outputs(unet, c2)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "routing, message",
    [
        (
            {"down": ["attrs"], "mid": ["attrs"], "up": ["attrs"]},
            "condition 'mask' is routed to no stage",
        ),
        (
            {"down": ["attrs", "hair"], "mid": ["mask"], "up": ["mask"]},
            r"routing.down: \['hair'\] is not a token condition",
        ),
        (
            {"down": ["attrs"], "mid": ["mask"], "up": ["mask"], "middle": ["mask"]},
            "unknown stage",
        ),
        ({"down": ["attrs"], "mid": ["mask"]}, "the up stage has cross-attention, so it needs"),
    ],
)
def test_bad_routing_is_an_error_naming_it(make_cfg, routing, message):
    from facediff.config import instantiate

    stages = ",".join(f"{k}:[{','.join(v)}]" for k, v in routing.items())
    cfg = make_cfg("conditioner=multi", f"denoiser.routing={{{stages}}}")
    with pytest.raises(ValueError, match=message):
        instantiate(cfg.model)


def test_routing_to_a_stage_without_attention_is_an_error():
    with pytest.raises(
        ValueError, match=r"routing.down=\['attrs'\]: the down stage has no cross-attention"
    ):
        UNet(
            8, 3, block_out_channels=(16, 32), attention_levels=(False, False), head_dim=8,
            norm_num_groups=8, cross_attention_dim=16,
            routing={"down": ["attrs"], "mid": ["attrs"], "up": []},
        )  # fmt: skip


@pytest.mark.parametrize("form", ["concat", "sum"])
def test_mcld_experiment_trains_and_samples(make_cfg, form):
    """experiment=mcld: routing, the region loss with per-class weights, min-SNR."""
    from pathlib import Path

    from facediff.api import FaceGenerator
    from facediff.cli.train import train

    cfg = make_cfg(
        "experiment=mcld", f"denoiser.routing_form={form}", "conditioner.encoders.mask.grid=2"
    )
    assert cfg.loss.region_classes["l_eye"] == 2.0
    metrics = train(cfg)
    assert np.isfinite(metrics["train/loss"]) and metrics["train/region"] > 0
    gen = FaceGenerator.from_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert gen.model.denoiser.routing == {
        "down": ["attrs"],
        "mid": ["attrs", "mask"],
        "up": ["mask"],
    }
    assert gen.sample(attributes={"Smiling": 1}, num_samples=1, num_steps=2).shape == (
        1,
        16,
        16,
        3,
    )


@pytest.mark.parametrize(
    "overrides, weighting, classes, count",
    [
        # MCLD's routing and region weights with P2 instead of min-SNR: routing apart from loss
        (["experiment=mcld", "loss=p2"], "P2Weighting", {"l_eye": 2.0, "nose": 1.0}, 8),
        (["experiment=mcld_p2"], "P2Weighting", {"l_eye": 2.0, "nose": 1.0}, 8),  # the same
        (["experiment=mcld"], "MinSNRWeighting", {"l_eye": 2.0, "nose": 1.0}, 8),
        (["loss=p2"], "P2Weighting", {"l_eye": 1.0, "l_lip": 1.0}, 7),  # the default classes
        (["loss.region_classes=[nose]"], "P2Weighting", {"nose": 1.0}, 1),  # a list replaces them
        (["loss.region_classes={nose:3.0}"], "P2Weighting", {"nose": 3.0}, 1),  # so does a dict
    ],
)
def test_region_classes_compose_with_every_loss(overrides, weighting, classes, count):
    """An experiment's {class: weight} and a command line's list or dict replace the loss's
    default region classes (a list in loss/p2.yaml failed to merge with mcld's dict)."""
    from facediff.config import compose, instantiate
    from facediff.data.labels import MASK_CLASSES

    cfg = compose("train", overrides)
    assert cfg.loss.weighting._target_.endswith(weighting)
    weights = dict(zip(MASK_CLASSES, instantiate(cfg.loss).region_class_weights.tolist()))
    assert {c: weights[c] for c in classes} == classes
    assert sum(w > 0 for w in weights.values()) == count
