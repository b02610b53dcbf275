"""What must hold on a CUDA GPU: precision and device chosen automatically, one training step,
sampling, a checkpoint round trip across devices. Skipped without CUDA; `make gpu-check` runs
them on the GPU, and its dry run (`FACEDIFF_TEST_DEVICE=cpu`) on the CPU, so that the script
is tested where no GPU is."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

DEVICE = os.environ.get("FACEDIFF_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    DEVICE.startswith("cuda") and not torch.cuda.is_available(),
    reason="needs a CUDA GPU (make gpu-check); FACEDIFF_TEST_DEVICE=cpu runs them on the CPU",
)
ACCELERATOR = "gpu" if DEVICE.startswith("cuda") else "cpu"


def test_precision_and_device_auto_follow_the_device():
    from facediff.precision import choose_precision, cpu_bf16_native, resolve_device

    precision, reason = choose_precision("auto")
    if ACCELERATOR == "gpu":
        assert resolve_device("auto").type == "cuda"
        native = torch.cuda.is_bf16_supported()
        assert torch.cuda.get_device_name(0) in reason
    else:
        native = cpu_bf16_native()
    assert precision == ("bf16-mixed" if native else "32-true")


def test_training_step_sampling_and_checkpoint_round_trip(make_cfg):
    """One training step on the device at precision=auto, then the checkpoint samples the same
    images twice on the device and images of the same shape on the CPU."""
    from facediff.api import FaceGenerator
    from facediff.cli.train import train

    cfg = make_cfg(
        "conditioner=attr_mask_concat",
        f"trainer.accelerator={ACCELERATOR}",
        "trainer.precision=auto",
        "trainer.max_steps=1",
    )
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    mask = np.zeros((16, 16), np.int64)
    mask[4:12, 4:12] = 1
    gen = FaceGenerator.from_checkpoint(ckpt, device=DEVICE)
    assert next(gen.model.parameters()).device.type == torch.device(DEVICE).type
    a = gen.sample(attributes={"Smiling": 1}, mask=mask, num_samples=2, seed=3)
    b = gen.sample(attributes={"Smiling": 1}, mask=mask, num_samples=2, seed=3)
    assert a.shape == (2, 16, 16, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    on_cpu = FaceGenerator.from_checkpoint(ckpt, device="cpu")
    c = on_cpu.sample(attributes={"Smiling": 1}, mask=mask, num_samples=2, seed=3)
    assert c.shape == a.shape
    # the same weights and noise on two devices: equal up to kernels' rounding (uint8 levels)
    assert np.abs(a.astype(int) - c.astype(int)).mean() < 8


def test_compiled_step_matches_eager_on_the_device(make_cfg):
    """The compiled denoiser's loss equals eager's on the device (same weights and batch)."""
    from facediff.config import instantiate

    cfg = make_cfg("conditioner=attr_mask_concat")
    dm = instantiate(cfg.data)
    dm.prepare_data()
    batch = {k: v.to(DEVICE) for k, v in next(iter(dm.train_dataloader())).items()}
    losses = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = instantiate(cfg.model).to(DEVICE)
        model.compile_denoiser = compiled
        model.apply_speed_options()
        model.generator.manual_seed(0)
        losses[compiled] = model.diffusion_loss(batch, model.generator)["loss"].detach().cpu()
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-3, atol=1e-4)
