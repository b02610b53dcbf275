"""trainer.precision=auto: chosen from what torch reports (and a short measurement), recorded."""

import pytest
import torch

from facediff import precision
from facediff.cli.train import train


def test_avx2_only_cpu_trains_in_fp32(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    chosen, why = precision.choose_precision("cpu")
    assert chosen == "32-true" and "no native bf16" in why


def test_native_bf16_cpu_trains_in_bf16_whatever_a_timing_says(monkeypatch):
    """A capability, not a measurement: a busy machine (bf16 timed slower) chooses the same."""
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "matmul_gflops", lambda dtype: pytest.fail("timed"))
    chosen, why = precision.choose_precision("auto")
    assert chosen == "bf16-mixed" and "native bf16" in why


def test_strided_conv_of_a_single_pixel_is_exact_in_bf16():
    """oneDNN's bf16 convolution gives a 3x3 stride-2 convolution of a 1x1 map wrong weight
    gradients (up to 5e34 or inf, about one call in twenty on an AVX-512 BF16 CPU): the
    guarded convolution matches fp32 in every trial, on every CPU."""
    torch.manual_seed(0)
    conv = precision.guard_strided_convs(torch.nn.Conv2d(128, 256, 3, stride=2, padding=1))
    for _ in range(40):
        x = torch.randn(4, 128, 1, 1)
        conv.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        assert y.dtype == torch.bfloat16
        y.float().square().sum().backward()
        got = conv.weight.grad.clone()
        conv.zero_grad()
        conv(x).square().sum().backward()  # fp32: the reference
        assert torch.isfinite(got).all()
        assert torch.allclose(got, conv.weight.grad, rtol=0.05, atol=0.05 * got.abs().max())


def test_cuda_with_bf16_trains_in_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Test GPU")
    assert precision.choose_precision("gpu") == (
        "bf16-mixed",
        "CUDA device Test GPU supports bf16",
    )
    # asking for the CPU on a GPU machine measures the CPU, not the GPU
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: False)
    assert precision.choose_precision("cpu")[0] == "32-true"


def test_a_user_choice_is_kept():
    assert precision.resolve_precision("bf16-mixed", "cpu") == (
        "bf16-mixed",
        "set by the user (trainer.precision)",
    )


def test_the_choice_is_logged_saved_and_used(make_cfg, monkeypatch, caplog):
    from facediff import checkpoint

    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: False)
    cfg = make_cfg("conditioner=attr", "callbacks.sample_grid.every_n_steps=0")
    assert cfg.trainer.precision == "auto"
    with caplog.at_level("INFO", logger="facediff.train"):
        train(cfg)
    assert any("precision 32-true: CPU" in r.getMessage() for r in caplog.records)
    saved = checkpoint.load(f"{cfg.paths.output_dir}/checkpoints/last.ckpt")["facediff"]["config"]
    assert saved["trainer"]["precision"] == "32-true"
    assert "no native bf16" in saved["precision_reason"]
