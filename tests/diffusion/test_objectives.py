"""Objectives: v-prediction and rectified flow, their loss weights, their samplers."""

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

from facediff.api import FaceGenerator
from facediff.cli.train import train
from facediff.diffusion.losses import (
    DiffusionLoss,
    MinSNRWeighting,
    NoWeighting,
    P2Weighting,
    snr_from_alphas,
    snr_from_flow_t,
)
from facediff.diffusion.sampling import Sampler
from facediff.diffusion.solvers import sampler_option
from facediff.models.conditioning import Conditioner

SCHED = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
WEIGHTINGS = [P2Weighting(0.5, 1.0), P2Weighting(1.0, 1.0), MinSNRWeighting(5.0)]


def draws(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, eps, x0_hat = (torch.randn(4, 3, 4, 4, generator=g) for _ in range(3))
    return x0, eps, x0_hat


@pytest.mark.parametrize("weighting", WEIGHTINGS, ids=lambda w: type(w).__name__ + str(w.gamma))
def test_v_loss_weight_equals_the_eps_loss_it_stands_for(weighting):
    """The same model estimate (x0_hat at the same x_t) scored as eps with w(t) and as v with
    the carried-over weight gives the same loss."""
    x0, eps, x0_hat = draws()
    t = torch.tensor([5, 200, 600, 990])
    ab = SCHED.alphas_cumprod[t].view(-1, 1, 1, 1)
    xt = SCHED.add_noise(x0, eps, t)
    eps_hat = (xt - ab.sqrt() * x0_hat) / (1 - ab).sqrt()
    v_hat = ab.sqrt() * eps_hat - (1 - ab).sqrt() * x0_hat
    snr = snr_from_alphas(SCHED.alphas_cumprod)[t]
    loss = DiffusionLoss(weighting)
    as_eps = loss(eps_hat, eps, snr, {}, "epsilon")["loss"]
    as_v = loss(v_hat, SCHED.get_velocity(x0, eps, t), snr, {}, "v_prediction")["loss"]
    torch.testing.assert_close(as_v, as_eps, rtol=1e-4, atol=1e-6)
    # METHODS.md's closed forms for v
    if isinstance(weighting, MinSNRWeighting):
        closed = snr.clamp(max=5.0) / (snr + 1)
    else:
        closed = snr / ((snr + 1) * (1 + snr) ** weighting.gamma)
    w_v = as_v / ((v_hat - SCHED.get_velocity(x0, eps, t)) ** 2).mean((1, 2, 3))
    torch.testing.assert_close(w_v, closed, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("weighting", WEIGHTINGS, ids=lambda w: type(w).__name__ + str(w.gamma))
def test_flow_loss_weight_equals_the_eps_loss_it_stands_for(weighting):
    x0, eps, x0_hat = draws(1)
    s = torch.tensor([0.05, 0.3, 0.6, 0.95])
    st = s.view(-1, 1, 1, 1)
    xt = (1 - st) * x0 + st * eps
    eps_hat = (xt - (1 - st) * x0_hat) / st
    v_hat = eps_hat - x0_hat
    snr = snr_from_flow_t(s)
    torch.testing.assert_close(snr, ((1 - s) / s) ** 2)
    loss = DiffusionLoss(weighting)
    as_eps = loss(eps_hat, eps, snr, {}, "epsilon")["loss"]
    as_flow = loss(v_hat, eps - x0, snr, {}, "flow")["loss"]
    torch.testing.assert_close(as_flow, as_eps, rtol=1e-4, atol=1e-6)
    w = as_flow / ((v_hat - (eps - x0)) ** 2).mean((1, 2, 3))
    if isinstance(weighting, MinSNRWeighting):
        closed = s**2 * snr.clamp(max=5.0)
    else:
        closed = (1 - s) ** 2 / (1 + snr) ** weighting.gamma
    torch.testing.assert_close(w, closed, rtol=1e-4, atol=1e-7)


def test_plain_loss_is_plain_on_every_target():
    pred, target = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    for prediction_type in ("epsilon", "v_prediction", "flow"):
        out = DiffusionLoss(NoWeighting())(
            pred, target, torch.tensor([0.5, 4.0]), {}, prediction_type
        )
        assert out["loss"].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="prediction_type='x': expected one of"):
        DiffusionLoss(P2Weighting())(pred, target, torch.tensor([0.5, 4.0]), {}, "x")


def test_v_prediction_round_trip():
    """x0 comes back from v and x_t: by hand, and through the DDIM step of a v model."""
    x0, eps, _ = draws(2)
    t = torch.tensor([10, 400, 700, 999])
    ab = SCHED.alphas_cumprod[t].view(-1, 1, 1, 1)
    xt, v = SCHED.add_noise(x0, eps, t), SCHED.get_velocity(x0, eps, t)
    torch.testing.assert_close(ab.sqrt() * xt - (1 - ab).sqrt() * v, x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(ab.sqrt() * v + (1 - ab).sqrt() * xt, eps, atol=1e-5, rtol=0)
    ddim = DDIMScheduler.from_config(SCHED.config, prediction_type="v_prediction")
    ddim.set_timesteps(10)
    for i in range(4):
        step = ddim.step(v[i : i + 1], int(t[i]), xt[i : i + 1])
        torch.testing.assert_close(step.pred_original_sample, x0[i : i + 1], atol=1e-4, rtol=0)


GAUSS_M, GAUSS_S = 0.7, 0.3


def gaussian_velocity(x, t, cond):
    """The exact velocity of 1-D data N(m, s^2) along x_t = (1 - t) x0 + t eps, at t * 1000."""
    m, s = GAUSS_M, GAUSS_S
    t = (t / 1000).view(-1, 1, 1, 1).double()
    var = (1 - t) ** 2 * s**2 + t**2
    dev = x.double() - (1 - t) * m
    e_x0 = m + (1 - t) * s**2 / var * dev
    e_eps = t / var * dev
    return (e_eps - e_x0).float()


def transport_error(sampler, num_steps, seed=3):
    """Max |sample - (m + s z)| over 256 noises z: the flow maps z to m + s z exactly."""
    config = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000).config
    shape = (256, 1, 1, 1)
    out = sampler(
        gaussian_velocity, Conditioner({}, dim=4), {"x": torch.zeros(256)}, shape, config,
        torch.Generator().manual_seed(seed), num_steps=num_steps,
    )  # fmt: skip
    z = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return (out - (GAUSS_M + GAUSS_S * z)).abs().max().item()


def test_flow_sampler_transports_a_gaussian_exactly():
    """Euler with the exact velocity (as facediff's loop drives FlowMatchEulerDiscreteScheduler)
    lands on m + s z, with the first-order error (halved by twice the steps)."""
    euler = Sampler(FlowMatchEulerDiscreteScheduler)
    assert transport_error(euler, 400) < 5e-3
    assert transport_error(euler, 50) / transport_error(euler, 25) == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc"])
def test_multistep_solvers_integrate_the_flow_to_second_order(solver):
    """sampler=dpmpp_2m / unipc on a flow model (diffusers' flow sigmas, flow_prediction, the
    model seeing sigma * 1000): on the Gaussian with its exact velocity they converge at second
    order (2.5x the steps: error / ~6) and at 25 steps beat flow Euler's 25 by 6x or more."""
    s = sampler_option(solver)
    e10, e25 = transport_error(s, 10), transport_error(s, 25)
    assert e25 < 0.012 and e25 / e10 < 0.25
    assert e25 * 6 < transport_error(Sampler(FlowMatchEulerDiscreteScheduler), 25)


def test_the_stochastic_solver_samples_the_flows_distribution():
    """sampler=sde_dpmpp (SDE-DPM-Solver++, first order: the DDPM posterior draw, DDIM eta 1)
    on a flow model with the exact velocity: its samples have the data's mean, and their std
    converges to the data's 0.3 with the steps (first order), where diffusers' FlowMatchEuler
    stochastic_sampling stays near 0.20."""
    config = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000).config
    sde, n = sampler_option("sde_dpmpp"), 8192

    def draw(steps, seed=0):
        gen = torch.Generator().manual_seed(seed)
        cond, shape = {"x": torch.zeros(n)}, (n, 1, 1, 1)
        return sde(
            gaussian_velocity, Conditioner({}, dim=4), cond, shape, config, gen, num_steps=steps
        )

    errors = []
    for steps in (25, 100, 400):
        out = draw(steps)
        assert abs(out.mean().item() - GAUSS_M) < 0.01
        errors.append(abs(out.std().item() - GAUSS_S))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.01
    assert sde.scheduler_cls.__name__ == "DPMSolverMultistepScheduler" and sde.solves_flow


def test_flow_training_draws_the_straight_path_and_the_velocity(make_cfg):
    """The flow loss by hand: with a denoiser that predicts 0, each sample's plain loss is
    mean((eps - z0)^2), where eps is read back from x_t = (1 - t) z0 + t eps."""
    from facediff.config import instantiate

    cfg = make_cfg(
        "objective=flow", "loss=plain", "conditioner=uncond", "model.objective.t_sampling=uniform"
    )
    model = instantiate(cfg.model)
    seen = {}

    def zero(zt, t, cond):
        seen.update(zt=zt, t=t)
        return torch.zeros_like(zt)

    model.denoiser.forward = zero
    z0 = torch.rand(8, 3, 16, 16) * 2 - 1
    terms = model.diffusion_loss({"image": z0}, torch.Generator().manual_seed(0))
    s = (seen["t"] / 1000).view(-1, 1, 1, 1)
    assert ((s > 0) & (s < 1)).all() and seen["t"].dtype.is_floating_point
    eps = (seen["zt"] - (1 - s) * z0) / s
    torch.testing.assert_close(terms["loss"], ((eps - z0) ** 2).mean((1, 2, 3)), rtol=1e-4, atol=0)
    # logit-normal t: sigmoid of N(0, 1), median 0.5, mostly in the middle
    model.objective.t_sampling = "logit_normal"
    t = model.objective.sample_t(20_000, torch.Generator().manual_seed(1))
    assert abs(t.median().item() - 0.5) < 0.01
    assert abs(torch.logit(t).std().item() - 1.0) < 0.02


@pytest.mark.parametrize(
    "objective, denoiser", [("v", "unet"), ("flow", "unet"), ("flow", "dit_tiny")]
)
def test_objectives_train_and_sample_through_the_configs(make_cfg, objective, denoiser):
    cfg = make_cfg(f"objective={objective}", f"denoiser={denoiser}", "conditioner=attr")
    metrics = train(cfg)
    assert np.isfinite(metrics["train/loss"])
    gen = FaceGenerator.from_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert gen.model.prediction_type == {"v": "v_prediction", "flow": "flow"}[objective]
    images = gen.sample(attributes={"Smiling": 1}, num_samples=2, num_steps=3)
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()
    if objective == "flow":  # a diffusion solver on a flow model is refused, naming both
        gen.model.sampler = sampler_option("ddim", like=gen.model.sampler)  # solver=ddim
        with pytest.raises(ValueError, match="objective=flow .choose sampler=flow_euler"):
            gen.sample(attributes={"Smiling": 1}, num_samples=1)
        gen.model.sampler = sampler_option("dpmpp_2m", like=gen.model.sampler)  # flow sigmas
        assert np.isfinite(gen.sample(attributes={"Smiling": 1}, num_samples=1, num_steps=3)).all()


def test_flow_sampler_on_a_diffusion_model_is_refused(make_cfg):
    from facediff.config import instantiate

    cfg = make_cfg("sampler=flow_euler")
    with pytest.raises(ValueError, match="trained as a diffusion model"):
        instantiate(cfg.model)


@pytest.mark.parametrize("solver", ["euler", "flow_euler"])
def test_euler_with_pixel_clipping_follows_the_clipped_x0(solver):
    """Euler and flow Euler have no clip option: facediff clamps x0 = z - sigma * output and
    re-derives the output, so an oracle for an out-of-range point (1.5) takes exactly the path
    of the oracle for the clipped point (1.0)."""
    from diffusers import EulerDiscreteScheduler

    flow = solver == "flow_euler"
    cls = FlowMatchEulerDiscreteScheduler if flow else EulerDiscreteScheduler
    config = (
        FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000).config if flow else SCHED.config
    )
    options = {} if flow else {"timestep_spacing": "trailing"}

    def run(point, pixel_space):
        seen = []

        def oracle(x, t, cond):
            seen.append(x.clone())
            if flow:  # v = (z - x0) / sigma for data that is one point
                return (x - point) / (t / 1000).view(-1, 1, 1, 1)
            # eps from the scaled input x = (x0 + sigma eps) / sqrt(sigma^2 + 1)
            sigma = oracle.sigmas[len(seen) - 1]
            return (x * (sigma**2 + 1).sqrt() - point) / sigma

        sched = cls.from_config(config, **options)
        sched.set_timesteps(8)
        oracle.sigmas = sched.sigmas
        out = Sampler(cls, num_steps=8, scheduler_options=options)(
            oracle, Conditioner({}, dim=4), {"x": torch.zeros(1)}, (1, 3, 4, 4), config,
            torch.Generator().manual_seed(0), pixel_space=pixel_space,
        )  # fmt: skip
        return out, torch.stack(seen)

    out, path = run(1.5, pixel_space=True)
    ref_out, ref_path = run(1.0, pixel_space=False)
    torch.testing.assert_close(path, ref_path, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out, torch.ones_like(out), atol=1e-3, rtol=0)
    unclipped, _ = run(1.5, pixel_space=False)
    assert unclipped.mean() > 1.4  # without clipping it lands on the out-of-range point
