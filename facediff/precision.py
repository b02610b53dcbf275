"""Training precision chosen by what the device can do, the same on every rank of a job.

`trainer.precision: auto` (the default) becomes `bf16-mixed` where bf16 is native and
`32-true` elsewhere:

- CUDA: bf16-mixed when the device supports bf16 (`torch.cuda.is_bf16_supported()`).
- CPU: bf16-mixed where torch says bf16 matmuls are native (oneDNN's bf16 check: AVX-512 BF16
  or AMX; a bf16 matmul there ran 2.2x faster than fp32), 32-true where they are not
  (AVX2-only CPUs, where a bf16 matmul ran 170x slower than fp32).

A capability, not a timing: a timing taken while the machine is busy can flip, and did (a rank
of a two-node job measured bf16 slower than fp32 and chose differently from rank 0). No list of
CPU names either: the same code picks bf16 on an AMX Xeon and fp32 on an AVX2 EPYC. Under DDP,
rank 0 shares its choice and a rank that chose otherwise stops (`facediff.lit.training`).
"""

from __future__ import annotations

import functools
import logging
import time
import types

import torch
from torch import nn

log = logging.getLogger(__name__)


@functools.cache
def matmul_gflops(dtype: torch.dtype, n: int = 256, seconds: float = 0.05) -> float:
    """GFLOP/s of an n x n matmul in `dtype` on the CPU (after one warm-up product): for the
    benchmarks, never for a choice."""
    a = torch.randn(n, n).to(dtype)
    a @ a
    count, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        a @ a
        count += 1
    return 2 * n**3 * count / elapsed / 1e9


def cpu_bf16_native() -> bool:
    """What torch reports: oneDNN runs bf16 natively (AVX-512 BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def _uses_cuda(accelerator: str) -> bool:
    return str(accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def choose_precision(accelerator: str = "auto") -> tuple[str, str]:
    """(precision, reason) for a Lightning Trainer on `accelerator`."""
    if _uses_cuda(accelerator):
        name = torch.cuda.get_device_name(0)
        if torch.cuda.is_bf16_supported():
            return "bf16-mixed", f"CUDA device {name} supports bf16"
        return "32-true", f"CUDA device {name} has no bf16"
    capability = torch.backends.cpu.get_cpu_capability()
    if not cpu_bf16_native():
        return "32-true", (
            f"CPU ({capability}): torch reports no native bf16 matmul (no AVX-512 BF16 / AMX), "
            "so bf16 would be emulated and far slower"
        )
    return (
        "bf16-mixed",
        f"CPU ({capability}): torch reports native bf16 matmuls (AVX-512 BF16 / AMX)",
    )


def resolve_device(device="auto") -> torch.device:
    """`auto`: the first CUDA device where there is one, else the CPU; anything else as torch
    reads it ("cpu", "cuda:1", a torch.device)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r}: expected auto, cpu, cuda or cuda:N ({e})") from None


def resolve_precision(precision, accelerator: str = "auto") -> tuple[str, str]:
    """`auto` (or None) -> choose_precision; anything else is the user's choice, kept."""
    if precision in (None, "auto"):
        return choose_precision(accelerator)
    return str(precision), "set by the user (trainer.precision)"


def _guarded_conv_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if (
        x.device.type == "cpu"
        and min(x.shape[-2:]) == 1
        and (x.dtype == torch.bfloat16 or torch.is_autocast_enabled("cpu"))
    ):
        bias = None if self.bias is None else self.bias.float()
        with torch.autocast("cpu", enabled=False):
            out = self._conv_forward(x.float(), self.weight.float(), bias)
        return out.to(torch.bfloat16)  # what the bf16 convolution would have returned
    return self._conv_forward(x, self.weight, self.bias)


def guard_strided_convs(module: nn.Module) -> nn.Module:
    """Run every strided Conv2d of `module` in fp32 when, on the CPU in bf16, its input is a
    single pixel wide or high; elsewhere it runs as before.

    oneDNN's bf16 convolution computes wrong weight gradients for a strided 3x3 convolution of a
    1x1 map (a ResNet's or SegFormer's last stage on 16 px masks): values up to 5e34 or inf, not
    the same from run to run (uninitialised memory, by the look of it), in about one call in
    twenty on an AVX-512 BF16 EPYC; fp32 and inputs of 2x2 or more are exact
    (tests/test_precision.py pins it against fp32). Those steps were skipped as non-finite at
    random under bf16-mixed. A 1x1 map costs nothing to convolve in fp32."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and max(m.stride) > 1 and "forward" not in vars(m):
            m.forward = types.MethodType(_guarded_conv_forward, m)
    return module


__all__ = [
    "choose_precision",
    "cpu_bf16_native",
    "guard_strided_convs",
    "matmul_gflops",
    "resolve_device",
    "resolve_precision",
]
