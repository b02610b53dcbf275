"""LatentDiffusion: the LightningModule that wires first stage, conditioner and denoiser."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import lightning as L
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor, nn

from facediff import checkpoint
from facediff.checkpoint import leave_out_frozen, restore_frozen
from facediff.config import UnsafeConfigError, instantiate_untrusted, register_resolvers
from facediff.diffusion.losses import DiffusionLoss
from facediff.diffusion.objectives import Objective, objective_for
from facediff.diffusion.sampling import Sampler
from facediff.lit.checks import check_options, check_wiring
from facediff.lit.ddp import agree
from facediff.models.autoencoders import Autoencoder, PixelSpace
from facediff.models.conditioning import Conditioner
from facediff.precision import guard_strided_convs

log = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


class LatentDiffusion(L.LightningModule):
    """Conditional (latent) diffusion with classifier-free guidance, P2-weighted loss and EMA.

    Args:
        autoencoder: first stage (PixelSpace for pixel-space diffusion), frozen.
        denoiser: `denoiser(zt, t, cond) -> prediction` (facediff.models.unet.UNet).
        conditioner: facediff.models.conditioning.Conditioner.
        loss: facediff.diffusion.losses.DiffusionLoss.
        noise_scheduler: the training noise schedule, a diffusers DDPMScheduler (T, betas,
            prediction type) or a FlowMatchEulerDiscreteScheduler; samplers are built from it.
        objective: what the model learns (`facediff.diffusion.objectives`: Epsilon,
            VPrediction, Sample, Flow), bound to `noise_scheduler`; None: the one the schedule
            implies (a pretrained pipeline's).
        sampler: facediff.diffusion.sampling.Sampler for validation grids and sampling.
        optimizer: partial optimizer (Hydra `_partial_: true`), finished here.
        lr_warmup_steps: linear warm-up of the learning rate.
        image_size: the data resolution (checked against the denoiser's sample size).
        ema_decay, ema_power: diffusers EMAModel with warm-up (decay grows as
            1 - (1 + step)^-power, capped at ema_decay).
        max_bad_steps: consecutive non-finite steps tolerated before training stops.
        seed: seeds the module's own generator for t, noise and condition dropout (its state
            travels in checkpoints, so a resumed run draws the same numbers).
        pretrained: the pretrained pipeline folder the parts were loaded from (experiment=
            lora_sd2), recorded with the model; the parts read it themselves.
        channels_last, compile_denoiser: speed levers for training (`apply_speed_options`):
            the denoiser's convolutions in channels-last memory, the denoiser compiled with
            torch.compile (in place: its state-dict keys are unchanged). `make bench` measures
            both against eager on the machine at hand.
        flow_t, flow_t_mean, flow_t_std: read from checkpoints written before the objective
            was an object (without `objective`); now `Flow(t_sampling, t_mean, t_std)`.
    """

    def __init__(
        self,
        autoencoder: Autoencoder,
        denoiser: nn.Module,
        conditioner: Conditioner,
        loss: DiffusionLoss,
        noise_scheduler: DDPMScheduler,
        sampler: Sampler,
        optimizer: Callable,
        image_size: int,
        lr_warmup_steps: int = 500,
        ema_decay: float = 0.9999,
        ema_power: float = 2 / 3,
        max_bad_steps: int = 20,
        seed: int = 0,
        objective: Objective | None = None,
        pretrained: str | None = None,
        channels_last: bool = False,
        compile_denoiser: bool = False,
        flow_t: str = "logit_normal",
        flow_t_mean: float = 0.0,
        flow_t_std: float = 1.0,
    ):
        super().__init__()
        self.pretrained = pretrained
        self.autoencoder, self.denoiser, self.conditioner = autoencoder, denoiser, conditioner
        guard_strided_convs(self)  # oneDNN's bf16 convolution of a 1x1 map (facediff.precision)
        self.loss, self.noise_scheduler, self.sampler = loss, noise_scheduler, sampler
        self.optimizer_factory, self.lr_warmup_steps = optimizer, lr_warmup_steps
        self.image_size, self.max_bad_steps, self.seed = image_size, max_bad_steps, seed
        if objective is None:
            objective = objective_for(noise_scheduler, flow_t, flow_t_mean, flow_t_std)
        self.objective = objective.bind(noise_scheduler)
        self.channels_last, self.compile_denoiser = bool(channels_last), bool(compile_denoiser)
        check_options(self, ema_decay, ema_power)
        check_wiring(self)
        self.ema = EMAModel(
            self.trainable_parameters(), decay=ema_decay, use_ema_warmup=True, power=ema_power
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.bad_steps = 0  # consecutive
        self.total_bad_steps = 0
        self._step_ok = True
        self._loss_finite = True
        self.build_config: dict | None = None  # the resolved config, saved in checkpoints
        self.data_info: dict | None = None  # attribute names, masks, resolution of the data

    def check_sampler(self, sampler: Sampler) -> None:
        """A flow model samples with a solver that integrates a flow, a diffusion model with a
        diffusion solver (`Sampler.check_model`)."""
        sampler.check_model(self.objective.is_flow)

    @property
    def prediction_type(self) -> str:
        return self.objective.prediction_type

    @property
    def requires(self) -> set[str]:
        """Batch keys the model reads besides the image."""
        return self.conditioner.requires | self.loss.requires

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What trains (and what the EMA follows): the denoiser's and the conditioner's
        parameters, less the frozen ones (a pretrained UNet under LoRA, a text encoder)."""
        return [
            p for m in (self.denoiser, self.conditioner) for p in m.parameters() if p.requires_grad
        ]

    def forward(self, zt: Tensor, t: Tensor, cond) -> Tensor:
        return self.denoiser(zt, t, cond)

    @torch.no_grad()
    def encode(self, batch: dict) -> Tensor:
        if "latent" in batch:
            return batch["latent"]
        return self.autoencoder.encode(batch["image"])

    # ---------------------------------------------------------------------------- training
    def diffusion_loss(self, batch: dict, generator: torch.Generator) -> dict[str, Tensor]:
        """One noisy prediction per sample; returns the loss terms (per sample)."""
        z0 = self.encode(batch)  # 1. first stage, (B, C, h, w)
        b, dev, obj = z0.shape[0], z0.device, self.objective
        t = obj.sample_t(b, generator).to(dev)  # 2. times and noise (the module's generator)
        eps = torch.randn(z0.shape, generator=generator).to(dev, z0.dtype)
        zt, target, snr = obj.noise(z0, eps, t), obj.target(z0, eps, t), obj.snr(t)  # 3. path
        if self.channels_last:
            zt = zt.contiguous(memory_format=torch.channels_last)
        drop = self.conditioner.sample_drop(b, generator, dev) if self.training else None
        cond = self.conditioner(batch, drop=drop, spatial_size=z0.shape[-2:])  # 4. condition
        pred = self.denoiser(zt, obj.model_time(t), cond)  # 5. predict
        extras = None
        if self.loss.infonce_weight:
            extras = {"attr_embeddings": self.conditioner.encoders["attrs"].encode(batch, None)}
        return self.loss(pred, target, snr, batch, self.prediction_type, extras)  # 6.

    def training_step(self, batch: dict, batch_idx: int):
        terms = self.diffusion_loss(batch, self.generator)
        loss = terms["loss"].mean()
        if not torch.isfinite(loss):
            # never `return None` (Lightning: unsupported under DDP, the other ranks would wait
            # in the gradient all-reduce): the backward runs, and on_before_optimizer_step
            # skips the step on every rank together
            self._loss_finite = False
            return loss
        for k, v in terms.items():
            self.log(f"train/{k}", v.mean(), prog_bar=k == "loss", batch_size=len(terms["loss"]))
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad for p in self.trainable_parameters() if p.grad is not None]
        # one fused norm per tensor: a NaN or inf anywhere makes its norm non-finite
        finite = bool(torch.stack(torch._foreach_norm(grads)).isfinite().all()) if grads else True
        local = "loss" if not self._loss_finite else None if finite else "gradient"
        # every rank skips, or none does: one all-reduce of the decision (DDP's gradients are
        # already averaged, but a loss that was non-finite on one rank only must count too)
        if not agree(self._trainer, local is None):  # no trainer: a bare step (make bench)
            self._record_bad_step(local or "loss or gradient on another rank")
            for p in self.trainable_parameters():
                p.grad = None  # the optimizer skips parameters without a gradient

    def _record_bad_step(self, what: str) -> None:
        self._step_ok = False
        self.bad_steps += 1
        self.total_bad_steps += 1
        self.log("train/skipped_steps", float(self.total_bad_steps))
        log.warning(
            "non-finite %s at step %d: step skipped (%d in a row)",
            what,
            self.global_step,
            self.bad_steps,
        )
        if self.bad_steps >= self.max_bad_steps:
            raise NonFiniteTrainingError(
                f"{self.bad_steps} consecutive steps had a non-finite {what} (model.max_bad_steps="
                f"{self.max_bad_steps}); stopping. The last checkpoint holds the last good weights."
            )

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._step_ok = True

    def optimizer_step(self, *args, **kwargs) -> None:
        """The optimizer step, then the EMA: both are done before any callback's
        on_train_batch_end, so a checkpoint written there holds a whole step."""
        super().optimizer_step(*args, **kwargs)
        self._loss_finite = True  # over the micro-batches of the next step
        if self._step_ok:
            self.bad_steps = 0
            self.ema.step(self.trainable_parameters())

    # -------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self.swap_ema(True)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        g = torch.Generator().manual_seed(10_000 + batch_idx)  # the same t and noise every time
        terms = self.diffusion_loss(batch, g)
        self.log(
            "val/loss",
            terms["mse"].mean(),
            prog_bar=True,
            sync_dist=True,
            batch_size=len(terms["mse"]),
        )

    def on_validation_epoch_end(self) -> None:
        self.swap_ema(False)

    def swap_ema(self, use_ema: bool) -> None:
        """Put the EMA weights in place (True) or the trained ones back (False)."""
        params = self.trainable_parameters()
        if use_ema:
            self.ema.to(self.device)
            self.ema.store(params)
            self.ema.copy_to(params)
        else:
            self.ema.restore(params)

    @contextmanager
    def ema_weights(self, enabled: bool = True) -> Iterator[LatentDiffusion]:
        """Eval mode with the EMA weights in place (the current ones if not `enabled`) for the
        block; the trained weights and the previous mode come back after it, error or not."""
        was_training = self.training
        self.eval()
        if enabled:
            self.swap_ema(True)
        try:
            yield self
        finally:
            if enabled:
                self.swap_ema(False)
            self.train(was_training)

    # ---------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(
        self,
        batch: dict,
        seed: int = 0,
        drop: dict | None = None,
        conditioner=None,
        generator: torch.Generator | None = None,
        **sampler_kwargs,
    ) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] for the conditions in `batch` (current weights; use
        `with model.ema_weights():` or `facediff.api.FaceGenerator` for the EMA weights);
        `conditioner` replaces the model's for this call (editing's interpolation); `generator`
        (a CPU torch.Generator) draws the noise instead of one seeded with `seed`."""
        self.check_sampler(self.sampler)
        b = len(batch[next(iter(batch))])
        h = self.autoencoder.latent_size(self.image_size)
        shape = (b, self.autoencoder.latent_channels, h, h)
        g = generator or torch.Generator().manual_seed(seed)
        sampler_kwargs = {k: v for k, v in sampler_kwargs.items() if v is not None}
        pixel_space = isinstance(self.autoencoder, PixelSpace)
        z0 = self.sampler(
            self.denoiser,
            self.conditioner if conditioner is None else conditioner,
            batch,
            shape,
            self.noise_scheduler.config,
            generator=g,
            drop=drop,
            pixel_space=pixel_space,
            flow=self.objective.is_flow,
            **sampler_kwargs,
        )
        return self.autoencoder.decode(z0.to(self.dtype)).float().clamp(-1, 1)

    # ------------------------------------------------------------------------- optimizers
    def configure_optimizers(self):
        opt = self.optimizer_factory(self.trainable_parameters())
        warmup = max(1, self.lr_warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------------ checkpoints
    def on_fit_start(self) -> None:
        self.ema.to(self.device)
        self.apply_speed_options()

    def apply_speed_options(self) -> None:
        """channels_last: the denoiser's weights in channels-last memory (its inputs follow in
        diffusion_loss); compile_denoiser: torch.compile of the denoiser, in place."""
        if self.channels_last:
            self.denoiser.to(memory_format=torch.channels_last)
        if self.compile_denoiser and not getattr(self, "_compiled", False):
            self.denoiser.compile()
            self._compiled = True

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        leave_out_frozen(self, checkpoint)  # named and hashed, not copied (facediff.checkpoint)
        checkpoint["ema"] = self.ema.state_dict()
        checkpoint["generator"] = self.generator.get_state()
        checkpoint["bad_steps"] = (self.bad_steps, self.total_bad_steps)
        for lg in self.loggers:
            if isinstance(lg, WandbLogger):
                checkpoint["wandb_run_id"] = lg.version

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.restore_pretrained(checkpoint)
        if "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])
        if "generator" in checkpoint:
            self.generator.set_state(checkpoint["generator"])
        self.bad_steps, self.total_bad_steps = checkpoint.get("bad_steps", (0, 0))

    def restore_pretrained(self, checkpoint: dict) -> None:
        """The frozen pretrained weights the checkpoint left out, checked and put back
        (`facediff.checkpoint.restore_frozen`)."""
        restore_frozen(self, checkpoint)

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path,
        map_location=None,
        hparams_file=None,
        strict=None,
        weights_only=None,
        use_ema: bool = False,
        allow_targets=(),
        **kwargs,
    ) -> LatentDiffusion:
        """Lightning's way to read a model, for a facediff-train checkpoint: verified and loaded
        without pickle (`facediff.checkpoint.load`), the model built from the config it
        recorded, facediff's classes only (`model_from_checkpoint`; `allow_targets` adds yours).
        `use_ema`: the EMA weights instead of the trained ones. The recorded config is the
        model: `hparams_file` and keyword overrides are refused rather than ignored."""
        if hparams_file is not None or kwargs:
            given = (["hparams_file"] if hparams_file is not None else []) + sorted(kwargs)
            raise ValueError(
                f"LatentDiffusion.load_from_checkpoint: {given} not taken; the model is rebuilt "
                "from the config its checkpoint recorded (change it by training anew)"
            )
        ckpt = checkpoint.load(checkpoint_path, "a facediff-train checkpoint")
        model = model_from_checkpoint(ckpt, use_ema, checkpoint_path, allow_targets)
        if isinstance(map_location, (str, torch.device)):
            model = model.to(map_location)
        return model

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())


def model_from_checkpoint(
    ckpt: dict, use_ema: bool = True, path=None, allow_targets=()
) -> LatentDiffusion:
    """Rebuild the LatentDiffusion of a checkpoint and load its (EMA) weights (`path`: the
    file it was read from, for the messages).

    The checkpoint's recorded `model` config is untrusted input like its tensors: only
    facediff's model classes are built from it (`facediff.config.instantiate_untrusted`), and
    any other `_target_` is refused naming the key; `allow_targets` adds classes of your own
    that you trust."""
    register_resolvers()
    where = f"{path or 'checkpoint'}: facediff.config.model"
    run = checkpoint.run_record(ckpt, path or "checkpoint")
    spec = run.config.get("model")
    target = spec.get("_target_") if isinstance(spec, dict) else None
    if target != "facediff.lit.diffusion.LatentDiffusion":
        raise UnsafeConfigError(
            f"{where}._target_={target!r}: expected facediff.lit.diffusion.LatentDiffusion"
        )
    model: LatentDiffusion = instantiate_untrusted(spec, where, allow_targets)
    try:  # first, as Lightning does: the frozen pretrained weights it left out, checked
        model.on_load_checkpoint(ckpt)
    except checkpoint.CheckpointError as e:
        raise checkpoint.CheckpointError(f"{path or 'checkpoint'}: {e}") from None
    model.load_state_dict(ckpt["state_dict"])
    model.data_info, model.build_config = run.data, run.config
    if use_ema:
        model.ema.copy_to(model.trainable_parameters())
    return model.eval()
