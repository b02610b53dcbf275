"""What a denoiser learns: the objective, an object chosen by `conf/objective/` (eps, v, flow).

An objective draws a time for each sample (`sample_t`), puts the data on its noisy path
(`noise`), names what the model must predict (`target`), the signal-to-noise ratio the loss
weightings read (`snr`) and the time the denoiser sees (`model_time`). `bind(scheduler)` ties it
to the model's training noise schedule (a diffusers scheduler: the schedule the samplers are
built from), checking that the two agree.

- `Epsilon`, `VPrediction`, `Sample`: discrete-time diffusion on a DDPMScheduler's schedule
  (x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, t in 0 .. T-1); the model predicts eps, v or x0.
- `Flow`: rectified flow (x_t = (1 - t) x0 + t eps, t in (0, 1)); the model predicts the
  velocity eps - x0 and sees t * T.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from facediff.diffusion.losses import snr_from_alphas, snr_from_flow_t


def is_flow_config(train_config) -> bool:
    """Whether a scheduler's config is rectified flow's (diffusers' FlowMatch* schedulers: a
    `shift`, no beta schedule; or a multistep solver set to flow sigmas, as an exported flow
    pipeline's DPM-Solver++ is) rather than a diffusion's."""
    return bool(
        ("shift" in train_config and "beta_schedule" not in train_config)
        or train_config.get("use_flow_sigmas")
    )


class Objective(nn.Module):
    """The training objective (an nn.Module only so that its tables follow the model's
    device). Subclasses set `prediction_type` (the name the loss weightings and diffusers'
    schedulers use) and implement the five steps."""

    prediction_type: str
    is_flow = False

    def __init__(self):
        super().__init__()
        self.scheduler = None

    @property
    def name(self) -> str:
        return {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow": "flow"}[
            self.prediction_type
        ]

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def bind(self, scheduler) -> Objective:
        """Tie the objective to the model's training noise schedule, checked."""
        self.scheduler = scheduler
        return self

    def sample_t(self, batch_size: int, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def noise(self, z0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def target(self, z0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def snr(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def model_time(self, t: Tensor) -> Tensor:
        return t


class Diffusion(Objective):
    """Discrete-time diffusion on a DDPMScheduler's betas: integer t drawn uniformly."""

    def bind(self, scheduler) -> Objective:
        if is_flow_config(scheduler.config) or not hasattr(scheduler, "alphas_cumprod"):
            raise ValueError(
                f"objective={self.name} needs a diffusion noise schedule (a DDPMScheduler), but "
                f"model.noise_scheduler is a {type(scheduler).__name__}; choose objective=flow "
                "for a flow schedule"
            )
        have = scheduler.config.prediction_type
        if have != self.prediction_type:
            raise ValueError(
                f"objective={self.name} trains {self.prediction_type}, but "
                f"model.noise_scheduler.prediction_type={have!r} (the samplers read it from "
                "there); make the two agree"
            )
        super().bind(scheduler)
        snr = snr_from_alphas(scheduler.alphas_cumprod.float())
        self.register_buffer("snr_table", snr, persistent=False)
        return self

    def sample_t(self, batch_size: int, generator: torch.Generator) -> Tensor:
        return torch.randint(0, self.num_train_timesteps, (batch_size,), generator=generator)

    def noise(self, z0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        return self.scheduler.add_noise(z0, eps, t)

    def snr(self, t: Tensor) -> Tensor:
        return self.snr_table[t]


class Epsilon(Diffusion):
    """The model predicts the noise (DDPM)."""

    prediction_type = "epsilon"

    def target(self, z0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        return eps


class VPrediction(Diffusion):
    """The model predicts v = sqrt(ab) eps - sqrt(1 - ab) x0 (Salimans & Ho 2022)."""

    prediction_type = "v_prediction"

    def target(self, z0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        return self.scheduler.get_velocity(z0, eps, t)


class Sample(Diffusion):
    """The model predicts the clean sample x0."""

    prediction_type = "sample"

    def target(self, z0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        return z0


T_SAMPLING = ("logit_normal", "uniform")


class Flow(Objective):
    """Rectified flow: x_t = (1 - t) x0 + t eps, the velocity eps - x0 as the target.

    Args:
        t_sampling: how t is drawn: "logit_normal" (t = sigmoid(n), n ~ N(t_mean, t_std^2),
            Esser et al. 2024) or "uniform".
    """

    prediction_type = "flow"
    is_flow = True

    def __init__(self, t_sampling: str = "logit_normal", t_mean: float = 0.0, t_std: float = 1.0):
        super().__init__()

        def number(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if t_sampling not in T_SAMPLING:
            raise ValueError(
                f"model.objective.t_sampling={t_sampling!r}: expected one of {list(T_SAMPLING)}"
            )
        if not (number(t_mean) and number(t_std) and t_std > 0):
            raise ValueError(
                f"model.objective.t_std={t_std!r}: expected a finite number > 0 (and a finite "
                "t_mean)"
            )
        self.t_sampling, self.t_mean, self.t_std = t_sampling, t_mean, t_std

    def bind(self, scheduler) -> Objective:
        if not is_flow_config(scheduler.config):
            raise ValueError(
                "objective=flow needs a flow schedule (FlowMatchEulerDiscreteScheduler), but "
                f"model.noise_scheduler is a {type(scheduler).__name__}"
            )
        return super().bind(scheduler)

    def sample_t(self, batch_size: int, generator: torch.Generator) -> Tensor:
        if self.t_sampling == "uniform":
            return torch.rand(batch_size, generator=generator)
        n = torch.randn(batch_size, generator=generator) * self.t_std + self.t_mean
        return torch.sigmoid(n)

    def noise(self, z0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        st = t.view(-1, 1, 1, 1).to(z0.dtype)
        return (1 - st) * z0 + st * eps

    def target(self, z0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        return eps - z0

    def snr(self, t: Tensor) -> Tensor:
        return snr_from_flow_t(t)

    def model_time(self, t: Tensor) -> Tensor:
        return t * self.num_train_timesteps


def objective_for(scheduler, flow_t: str = "logit_normal", flow_t_mean=0.0, flow_t_std=1.0):
    """The objective a noise schedule implies on its own: a pretrained pipeline's scheduler
    (`model.objective: null`), and checkpoints written before objectives were objects (their
    `model.flow_t*` options)."""
    if is_flow_config(scheduler.config):
        return Flow(flow_t, flow_t_mean, flow_t_std).bind(scheduler)
    kinds = {c.prediction_type: c for c in (Epsilon, VPrediction, Sample)}
    pt = scheduler.config.prediction_type
    if pt not in kinds:
        raise ValueError(
            f"model.noise_scheduler.prediction_type={pt!r}: expected one of {list(kinds)}"
        )
    return kinds[pt]().bind(scheduler)


__all__ = [
    "Epsilon",
    "Flow",
    "Objective",
    "Sample",
    "VPrediction",
    "is_flow_config",
    "objective_for",
]
