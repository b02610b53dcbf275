import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from facediff.diffusion.losses import (
    DiffusionLoss,
    MinSNRWeighting,
    NoWeighting,
    P2Weighting,
    loss_weight,
    snr_from_alphas,
)
from facediff.diffusion.sampling import Sampler, guidance_levels
from facediff.models.conditioning import AttributeEncoder, Conditioner, MaskConcatEncoder

SCHED = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
SNR = snr_from_alphas(SCHED.alphas_cumprod)


def test_p2_invariants():
    assert torch.equal(P2Weighting(gamma=0.0)(SNR), torch.ones_like(SNR))
    w = P2Weighting(gamma=0.5, k=1.0)(SNR)
    assert (w[1:] >= w[:-1]).all()  # SNR falls with t, so the weight rises
    assert w[0] < w[-1]
    t = 250
    expected = 1 / (1 + SCHED.alphas_cumprod[t] / (1 - SCHED.alphas_cumprod[t])) ** 0.5
    assert w[t].item() == pytest.approx(expected.item(), rel=1e-5)


def test_min_snr():
    snr = torch.tensor([0.5, 5.0, 50.0])
    assert MinSNRWeighting(5.0)(snr).tolist() == pytest.approx([1.0, 1.0, 0.1])
    assert loss_weight(MinSNRWeighting(5.0), snr, "v_prediction").tolist() == pytest.approx(
        [0.5 / 1.5, 5 / 6, 5 / 51]
    )


def test_loss_is_weighted_per_sample_mse_and_region_term():
    pred, target = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    snr = torch.tensor([1.0, 3.0])
    out = DiffusionLoss(P2Weighting(1.0, 1.0))(pred, target, snr, {})
    assert out["loss"].tolist() == pytest.approx([0.5, 0.25])
    mask = torch.zeros(2, 8, 8, dtype=torch.long)
    mask[:, :4, :4] = 4  # l_eye: a quarter of the image
    out = DiffusionLoss(NoWeighting(), region_weight=2.0)(pred, target, snr, {"mask": mask})
    assert out["region"].tolist() == pytest.approx([0.25, 0.25])
    assert out["loss"].tolist() == pytest.approx([1.5, 1.5])


def test_add_noise_matches_closed_form_and_t0_is_near_z0():
    z0, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = torch.tensor([0, 600])
    ab = 1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)  # linear betas
    ab = torch.cumprod(ab, 0)[t].float().view(-1, 1, 1, 1)
    zt = SCHED.add_noise(z0, eps, t)
    torch.testing.assert_close(zt, ab.sqrt() * z0 + (1 - ab).sqrt() * eps, atol=1e-5, rtol=1e-5)
    assert (zt[0] - z0[0]).abs().max() < 0.01 * eps[0].abs().max() + 1e-3


def test_guidance_levels():
    levels, coef = guidance_levels(["a", "m"], 1.0)
    assert levels == [{"a": False, "m": False}] and coef == [1.0]
    levels, coef = guidance_levels(["a", "m"], 3.0)  # plain CFG: e0 + 3 (eK - e0)
    assert levels == [{"a": True, "m": True}, {"a": False, "m": False}] and coef == [-2.0, 3.0]
    levels, coef = guidance_levels(["a", "m"], {"a": 2.0, "m": 4.0})
    assert levels[1] == {"a": False, "m": True} and coef == [-1.0, -2.0, 4.0]
    assert sum(coef) == 1.0
    with pytest.raises(ValueError, match="'x'.*not trained with"):
        guidance_levels(["a"], {"x": 2.0})


def make_cond():
    return Conditioner({"attrs": AttributeEncoder(3, 8, hidden=8), "mask": MaskConcatEncoder()}, 8)


def batch():
    return {
        "attrs": torch.tensor([[1.0, 0, 1]]),
        "attrs_known": torch.ones(1, 3, dtype=torch.bool),
        "mask": torch.randint(0, 19, (1, 8, 8), generator=torch.Generator().manual_seed(0)),
    }


def denoise_fn(x, t, cond):  # a denoiser whose output depends on the condition
    return x * 0.1 + cond.tokens.mean() + cond.spatial.mean((1, 2, 3), keepdim=True)


def test_guidance_scale_one_equals_conditional_and_sampling_is_seeded():
    cond = make_cond()
    s = Sampler(DDIMScheduler, num_steps=3)
    cfg = SCHED.config

    def run(gs, seed):
        return s(
            denoise_fn,
            cond,
            batch(),
            (1, 3, 8, 8),
            cfg,
            torch.Generator().manual_seed(seed),
            guidance_scale=gs,
        )

    a1 = run(1.0, 0)
    torch.testing.assert_close(run({"attrs": 1.0, "mask": 1.0}, 0), a1)
    torch.testing.assert_close(run(1.0, 0), a1)  # seeded: repeatable
    assert not torch.allclose(run(1.0, 1), a1)
    assert not torch.allclose(run(3.0, 0), a1)  # guidance changes the result


def test_ddim_eta_needs_a_scheduler_that_has_it():
    with pytest.raises(ValueError, match="has no eta"):
        Sampler(DDPMScheduler, eta=1.0)


@pytest.mark.parametrize(
    "cls,steps,eta,options",
    [
        (DDIMScheduler, 50, 0.0, {}),
        (DDIMScheduler, 20, 1.0, {}),
        (DDPMScheduler, 1000, 0.0, {}),
        (DPMSolverMultistepScheduler, 10, 0.0, {"algorithm_type": "dpmsolver++"}),
        (UniPCMultistepScheduler, 10, 0.0, {}),
        (EulerDiscreteScheduler, 10, 0.0, {"timestep_spacing": "trailing"}),
    ],
)
def test_sampler_recovers_the_point_of_an_oracle_denoiser(cls, steps, eta, options):
    """For data that is one point z0, the optimal epsilon is (x - sqrt(ab) z0) / sqrt(1 - ab);
    every sampler must land on z0 (an independent check of the loop and the schedulers). The
    fast solvers get there in 10 steps: with an exact epsilon their ODE steps are exact."""
    ab = SCHED.alphas_cumprod
    z0 = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(5)) * 2 - 1

    def oracle(x, t, cond):
        assert torch.equal(t, t.round())  # integer timesteps: the oracle's ab is exact
        a = ab[t.long()].view(-1, 1, 1, 1)
        return (x - a.sqrt() * z0) / (1 - a).sqrt()

    out = Sampler(cls, num_steps=steps, eta=eta, scheduler_options=options)(
        oracle,
        Conditioner({}, dim=4),
        {"x": torch.zeros(2)},
        (2, 3, 4, 4),
        SCHED.config,
        torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(out, z0.expand(2, -1, -1, -1), atol=1e-4, rtol=0)


def test_ddim_with_pixel_clipping_follows_the_clipped_x0():
    """An oracle for an out-of-range point (1.5) sampled with x0 clipping must take exactly the
    path of the oracle for the clipped point (1.0): every step's epsilon is re-derived from the
    clipped x0 (GLIDE). diffusers' default keeps the unclipped epsilon, and the mismatch grows
    with the number of steps."""
    ab = SCHED.alphas_cumprod

    def oracle(point, seen):
        def denoise(x, t, cond):
            seen.append(x.clone())
            a = ab[t].view(-1, 1, 1, 1)
            return (x - a.sqrt() * point) / (1 - a).sqrt()

        return denoise

    def run(point, pixel_space):
        seen = []
        out = Sampler(DDIMScheduler, num_steps=20)(
            oracle(point, seen),
            Conditioner({}, dim=4),
            {"x": torch.zeros(1)},
            (1, 3, 4, 4),
            SCHED.config,
            torch.Generator().manual_seed(0),
            pixel_space=pixel_space,
        )
        return out, torch.stack(seen)

    out, path = run(1.5, pixel_space=True)
    ref_out, ref_path = run(1.0, pixel_space=False)
    torch.testing.assert_close(path, ref_path, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, torch.ones_like(out), atol=1e-4, rtol=0)


def test_region_term_with_per_class_weights():
    """{class: weight}: each pixel counts with its class's weight (eyes 2, nose 1, others 0)."""
    pred, target = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[:, :4, :4] = 4  # l_eye: a quarter
    mask[:, 4:, 4:] = 2  # nose: a quarter
    loss = DiffusionLoss(
        NoWeighting(), region_weight=1.0, region_classes={"l_eye": 2.0, "nose": 1.0}
    )
    out = loss(pred, target, torch.tensor([1.0]), {"mask": mask})
    assert out["region"].tolist() == pytest.approx([2 * 0.25 + 1 * 0.25])
    with pytest.raises(ValueError, match="loss.region_classes: weights"):
        DiffusionLoss(region_classes={"l_eye": -1.0})
    with pytest.raises(ValueError, match=r"loss.region_classes: unknown \['eyes'\]"):
        DiffusionLoss(region_classes=["eyes"])
