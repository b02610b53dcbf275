"""Sampling: one loop over a diffusers scheduler, with batched, per-condition guidance.

Guidance over conditions c_1..c_K (the conditioner's order) composes nested differences
(as InstructPix2Pix does for two conditions):

    eps = e_0 + sum_j s_j * (e_j - e_{j-1}),   e_j = eps(z_t | c_1..c_j kept, the rest null)

so one scale for all conditions is ordinary classifier-free guidance, e_0 + s (e_K - e_0), and
all scales 1 give the conditional prediction e_K. Consecutive conditions with equal scales
share one level, and all levels run in one forward pass.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from torch import Tensor

from facediff.diffusion.objectives import is_flow_config
from facediff.models.denoiser import Condition


def guidance_levels(names: list[str], scales: dict[str, float] | float):
    """Drop-sets and coefficients of the guidance combination.

    Returns (levels, coefficients): levels[i] is {name: dropped?}; the guided prediction is
    sum_i coefficients[i] * eps(levels[i]).
    """
    if not isinstance(scales, dict):
        scales = {n: float(scales) for n in names}
    unknown = [n for n in scales if n not in names]
    if unknown:
        raise ValueError(
            f"guidance_scale names condition(s) {unknown} the model was not trained with; "
            f"its conditions are {names}"
        )
    s = [float(scales.get(n, 1.0)) for n in names]
    if all(v == 1.0 for v in s):  # the conditional prediction alone
        return [{n: False for n in names}], [1.0]
    # group consecutive equal scales: cut points where the scale changes
    cuts = [j for j in range(1, len(names)) if s[j] != s[j - 1]] + [len(names)]
    group_scales = [s[c - 1] for c in cuts]
    levels = [{n: True for n in names}] + [{n: i >= c for i, n in enumerate(names)} for c in cuts]
    # eps = e_0 + sum_g s_g (e_g - e_{g-1})  ->  coefficients per level
    coef = [0.0] * len(levels)
    coef[0] = 1.0
    for g, sg in enumerate(group_scales, start=1):
        coef[g] += sg
        coef[g - 1] -= sg
    return levels, coef


def _number(value, option: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{option}={value!r}: expected a finite number")
    if not math.isfinite(value):
        raise ValueError(f"{option}={value!r}: expected a finite number")
    return float(value)


def check_sampling_options(num_steps=None, eta=None, guidance_scale=None) -> None:
    """Fail on a sampling option that would give a silent wrong result, naming it: steps an
    integer >= 1, eta finite in [0, 1], guidance scales finite numbers (per condition too)."""
    if num_steps is not None and not (
        isinstance(num_steps, (int, float))
        and not isinstance(num_steps, bool)
        and math.isfinite(num_steps)
        and num_steps == int(num_steps)
        and num_steps >= 1
    ):
        raise ValueError(f"num_steps={num_steps!r}: expected an integer >= 1")
    if eta is not None and not 0 <= _number(eta, "eta") <= 1:
        raise ValueError(f"eta={eta!r}: expected a number in [0, 1]")
    if guidance_scale is not None:
        if hasattr(guidance_scale, "items"):
            for name, scale in guidance_scale.items():
                _number(scale, f"guidance_scale[{name!r}]")
        else:
            _number(guidance_scale, "guidance_scale")


class Sampler:
    """DDPM / DDIM (eta) / DPM-Solver++ / UniPC / Euler / flow-matching Euler / any diffusers
    scheduler, built from the training scheduler's config.

    On a rectified-flow model, the flow-matching schedulers integrate the flow as they are, and
    the multistep solvers that know diffusers' flow sigmas (DPM-Solver++, UniPC, DEIS) run with
    `use_flow_sigmas=True, prediction_type="flow_prediction"` (x0 = z - sigma * v); the model sees
    t = sigma * T exactly (those solvers round their timesteps to integers). The solvers of the
    discrete-time diffusion (DDPM, DDIM, Euler) refuse a flow model, and the flow-matching ones a
    diffusion model, naming both.

    Args:
        scheduler: a diffusers scheduler class (e.g. diffusers.DDIMScheduler).
        num_steps: sampling steps.
        eta: DDIM stochasticity (0 deterministic "d.", 1 stochastic "s."); only for schedulers
            whose step takes it.
        guidance_scale: one scale, or {condition: scale}.
        clip_sample: clip the predicted x0 to [-1, 1] at each step. None: only where the caller
            says the samples live in pixel space (`pixel_space=True`); never in a latent space,
            whose values are not bounded (a pitfall of public face LDMs). Schedulers with
            `clip_sample` (DDPM, DDIM) clip; those with `thresholding` (DPM-Solver++, UniPC) get
            thresholding with sample_max_value=1, which clamps x0 to [-1, 1] exactly; for the
            others (Euler, flow Euler: x0 = z - sigma * output) facediff clamps x0 and
            re-derives the output from it before the step.
        scheduler_options: more keyword arguments for the scheduler (e.g. DPM-Solver++:
            {algorithm_type: dpmsolver++, solver_order: 2}).
    """

    def __init__(
        self,
        scheduler: type,
        num_steps: int = 50,
        eta: float = 0.0,
        guidance_scale: float | dict[str, float] = 1.0,
        clip_sample: bool | None = None,
        scheduler_options: dict | None = None,
    ):
        check_sampling_options(num_steps, eta, guidance_scale)
        self.scheduler_options = dict(scheduler_options or {})
        init = inspect.signature(scheduler.__init__).parameters
        # how x0 is clipped: the scheduler's own clip_sample (DDPM, DDIM) or thresholding
        # (DPM-Solver++, UniPC); otherwise ("rederive": Euler, flow Euler, sigma-space schedulers)
        # facediff clips x0 = z - sigma * output itself and re-derives the output from it
        self._clip_kind = (
            "clip_sample"
            if "clip_sample" in init
            else "thresholding"
            if "thresholding" in init
            else "rederive"
        )
        self.scheduler_cls, self.num_steps, self.eta = scheduler, num_steps, eta
        self.clip_sample = clip_sample
        self.guidance_scale = (
            dict(guidance_scale) if hasattr(guidance_scale, "items") else guidance_scale
        )
        step_params = inspect.signature(scheduler.step).parameters
        self._takes_eta = "eta" in step_params
        self._takes_generator = "generator" in step_params
        self.solves_flow = scheduler.__name__.startswith("FlowMatch") or "use_flow_sigmas" in init
        self.solves_diffusion = not scheduler.__name__.startswith("FlowMatch")
        # DDIM: with x0 clipped, re-derive eps from the clipped x0 (as GLIDE does). diffusers
        # keeps the unclipped eps by default, and the mismatch compounds with the number of
        # steps: on the demo model, 100 DDIM steps gave FID* 363 and mIoU 17.6 without it,
        # 113 and 25.0 with it (docs/demo.md, "Sampler steps").
        self._clipped_eps = "use_clipped_model_output" in step_params
        self._check_eta(eta)

    def _check_eta(self, eta) -> None:
        # (diffusers' FlowMatchEuler stochastic_sampling is no flow "s.": re-noising the
        # predicted x0, a posterior mean, shrinks the variance: std 0.20 for N(0.7, 0.3^2))
        if eta and not self._takes_eta:
            raise ValueError(
                f"sampler.eta={eta}: {self.scheduler_cls.__name__} has no eta; use DDIMScheduler"
            )

    def check_model(self, flow: bool) -> None:
        """Fail, naming the solver and the model, where this solver cannot sample the model."""
        name = self.scheduler_cls.__name__
        if flow and not self.solves_flow:
            raise ValueError(
                f"sampler: {name} is a diffusion solver; this model was trained with "
                "objective=flow (choose sampler=flow_euler, dpmpp_2m or unipc)"
            )
        if not flow and not self.solves_diffusion:
            raise ValueError(
                f"sampler: {name} integrates a flow; this model was trained as a diffusion "
                "model (choose ddim, ddpm, dpmpp_2m, unipc or euler)"
            )

    @torch.no_grad()
    def __call__(
        self,
        denoise: Callable,
        conditioner,
        batch: dict,
        shape,
        train_config,
        generator: torch.Generator | None = None,
        num_steps: int | None = None,
        eta: float | None = None,
        guidance_scale=None,
        drop: dict | None = None,
        pixel_space: bool = False,
        progress: bool = False,
        shared_noise: bool = False,
        step_callback: Callable | None = None,
        flow: bool | None = None,
    ) -> Tensor:
        """Draw latents of `shape` (B, C, h, w) for the conditions in `batch`; conditions named
        True in `drop` are replaced by their null embedding at every guidance level.
        `shared_noise`: every sample starts from the same noise (editing); `step_callback(i,
        t, zt) -> zt` sees (and may replace) the latent after each step. `flow`: whether the
        model is a flow (its objective says; None: read from `train_config`, as an exported
        pipeline's scheduler config tells it)."""
        check_sampling_options(num_steps, eta, guidance_scale)
        flow = is_flow_config(train_config) if flow is None else flow
        self.check_model(flow)
        eta = self.eta if eta is None else eta
        self._check_eta(eta)
        clip = pixel_space if self.clip_sample is None else self.clip_sample
        rederive = clip and self._clip_kind == "rederive"
        if rederive and train_config.get("prediction_type", "flow") not in ("epsilon", "flow"):
            raise ValueError(
                f"sampler: {self.scheduler_cls.__name__} clips x0 in pixel space only for "
                "epsilon and flow models; use ddim, dpmpp_2m or unipc for a "
                f"{train_config.get('prediction_type')} model (or clip_sample=false)"
            )
        options = dict(self.scheduler_options)
        if self._clip_kind == "clip_sample":
            options["clip_sample"] = clip
        elif self._clip_kind == "thresholding":  # s = clamp(quantile, 1, 1) = 1: x0 in [-1, 1]
            options |= {"thresholding": clip, "sample_max_value": 1.0}
        if flow and self.solves_diffusion:  # a multistep solver on the flow's sigmas
            options |= {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
        scheduler = self.scheduler_cls.from_config(train_config, **options)
        scheduler.set_timesteps(int(self.num_steps if num_steps is None else num_steps))
        step_kwargs = {"generator": generator} if self._takes_generator else {}
        step_kwargs |= {"eta": eta} if self._takes_eta else {}
        if clip and self._clipped_eps:
            step_kwargs["use_clipped_model_output"] = True
        gs = self.guidance_scale if guidance_scale is None else guidance_scale
        dropped = [n for n, d in (drop or {}).items() if d]
        names = [n for n in conditioner.names if n not in dropped]
        if isinstance(gs, dict):
            gs = {n: s for n, s in gs.items() if n not in dropped or n not in conditioner.names}
        levels, coef = guidance_levels(names, gs)
        levels = [level | {n: True for n in dropped} for level in levels]
        device = next(conditioner.parameters()).device
        if shared_noise:
            zt = torch.randn((1, *shape[1:]), generator=generator).expand(shape).clone()
        else:
            zt = torch.randn(shape, generator=generator, device="cpu")
        zt = zt.to(device)
        zt = zt * getattr(scheduler, "init_noise_sigma", 1.0)  # flow schedulers start at 1
        scale = getattr(scheduler, "scale_model_input", lambda z, t: z)
        cond = Condition.cat([conditioner(batch, drop=d, spatial_size=shape[-2:]) for d in levels])
        timesteps = scheduler.timesteps
        if progress:
            from tqdm.auto import tqdm

            timesteps = tqdm(timesteps, desc="sampling", leave=False)
        T = train_config.get("num_train_timesteps", 1000)
        for i, t in enumerate(timesteps):  # 1. predict every level at once, 2. combine, 3. step
            x = scale(zt, t).repeat(len(levels), 1, 1, 1)
            tm = scheduler.sigmas[i].float() * T if flow else t  # the flow's exact t * T
            eps = denoise(x, tm.expand(len(x)).to(device), cond).float().chunk(len(levels))
            guided = sum(c * e for c, e in zip(coef, eps))
            if rederive:  # x0 = z - sigma * output for eps (sigma space) and flow alike
                sigma = scheduler.sigmas[i].to(zt.device, zt.dtype)
                x0 = (zt - sigma * guided).clamp(-1, 1)
                guided = (zt - x0) / sigma
            zt = scheduler.step(guided, t, zt, **step_kwargs).prev_sample
            if step_callback is not None:
                zt = step_callback(i, t, zt)
        return zt
