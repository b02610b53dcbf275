"""Training precision chosen by what the machine does well, decided at run time.

`trainer.precision: auto` (the default) becomes `bf16-mixed` where bf16 is really faster and
`32-true` elsewhere:

- CUDA: bf16-mixed when the device supports bf16 (`torch.cuda.is_bf16_supported()`).
- CPU: torch first says whether bf16 matmuls are native (oneDNN's bf16 check: AVX-512 BF16 or
  AMX). Where they are not (AVX2-only CPUs: a bf16 matmul there ran 170x slower than fp32),
  32-true without measuring. Where they are, a short matmul measurement (about 0.1 s) confirms
  that bf16 beats fp32 by `MIN_SPEEDUP` before choosing it.

No list of CPU names: the same code picks bf16 on an AMX Xeon and fp32 on an AVX2 EPYC.
"""

from __future__ import annotations

import functools
import logging
import time

import torch

log = logging.getLogger(__name__)

MIN_SPEEDUP = 1.2  # bf16 must beat fp32 by this much on the CPU to be chosen


@functools.cache
def matmul_gflops(dtype: torch.dtype, n: int = 256, seconds: float = 0.05) -> float:
    """GFLOP/s of an n x n matmul in `dtype` on the CPU (after one warm-up product)."""
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
    fp32, bf16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    measured = f"256x256 matmul: bf16 {bf16:.1f} vs fp32 {fp32:.1f} GFLOP/s"
    if bf16 >= MIN_SPEEDUP * fp32:
        return "bf16-mixed", f"CPU ({capability}) with native bf16; {measured}"
    return "32-true", f"CPU ({capability}): native bf16 but not faster here; {measured}"


def resolve_precision(precision, accelerator: str = "auto") -> tuple[str, str]:
    """`auto` (or None) -> choose_precision; anything else is the user's choice, kept."""
    if precision in (None, "auto"):
        return choose_precision(accelerator)
    return str(precision), "set by the user (trainer.precision)"


__all__ = ["choose_precision", "resolve_precision", "matmul_gflops", "cpu_bf16_native"]
