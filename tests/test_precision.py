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


@pytest.mark.parametrize(
    ("bf16", "fp32", "expected"), [(600.0, 100.0, "bf16-mixed"), (90.0, 100.0, "32-true")]
)
def test_native_bf16_cpu_is_measured_before_it_is_chosen(monkeypatch, bf16, fp32, expected):
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rates = {torch.bfloat16: bf16, torch.float32: fp32}
    monkeypatch.setattr(precision, "matmul_gflops", lambda dtype: rates[dtype])
    chosen, why = precision.choose_precision("auto")
    assert chosen == expected and f"bf16 {bf16:.1f} vs fp32 {fp32:.1f} GFLOP/s" in why


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
