"""facediff-bench at paper scale, on whatever device is at hand (CUDA or the CPU).

For each model (the UNet at 64x64x4 latents, DiT-S/2 and DiT-B/2 at 32x32x4, the demo) and
precision: samples/s of the full training step (conditioner, loss, backward, gradient
clipping, AdamW, EMA: what Lightning runs), eager and compiled; sampling images/s at 10 and 25
steps with classifier-free guidance; the peak memory (CUDA); and the FLOP utilisation, the
step's FLOPs (counted by torch's FlopCounterMode) per second against the matmul peak measured
on the same device in the same dtype. CUDA timings are synchronised.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time

import torch
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode

from facediff.config import compose, instantiate
from facediff.models.autoencoders import Autoencoder

log = logging.getLogger("facediff.bench")


class CachedLatents(Autoencoder):
    """A first stage of a given latent shape that the benchmark never runs: training reads
    cached latents (`batch["latent"]`, as facediff's latent route does for every autoencoder)
    and sampling returns the latents, so the decoder is left out of the images/s."""

    def __init__(self, channels: int, factor: int):
        super().__init__()
        self.latent_channels, self.downsample_factor = channels, factor

    def encode(self, image):
        raise RuntimeError("CachedLatents: the benchmark's batches carry their latents")

    def decode(self, latent):
        return latent


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, sizes) -> float:
    """The best TFLOP/s of square matmuls of the given sizes on `device` in `dtype`
    (torch.utils.benchmark's Timer: warmed up, CUDA-synchronised, on as many threads as the
    training step gets; its default is one). fp32 on CUDA is true fp32 (torch's default: TF32
    off for matmuls)."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        timer = Timer("a @ b", globals={"a": a, "b": b}, num_threads=torch.get_num_threads())
        m = timer.blocked_autorange(min_run_time=0.5)
        best = max(best, 2 * n**3 / m.median / 1e12)
    return best


@functools.lru_cache(maxsize=2)
def _demo_data(base: tuple):
    """The demo's prepared SynthFaces, opened once for all rows."""
    data = instantiate(compose("train", [*base, "experiment=demo"]).data)
    data.prepare_data()
    return data


def build(spec, device: torch.device, batch_size: int, base=()):
    """The model of one benchmark row and a batch of `batch_size` on `device`: conditions from
    the demo's SynthFaces (repeated to the batch size) and, for a latent row, random latents of
    the row's shape (`latent: [channels, size, factor]`). `base`: overrides before the row's."""
    from facediff.data.batch import condition_batch, to_device

    overrides = list(base) + list(spec.get("overrides", []))
    latent = spec.get("latent")
    if latent is not None:
        c, size, factor = latent
        overrides += [
            f"latent.channels={c}",
            f"latent.factor={factor}",
            f"data.resolution={size * factor}",
        ]
    cfg = compose("train", overrides)
    torch.manual_seed(0)
    kwargs = {"autoencoder": CachedLatents(c, factor)} if latent is not None else {}
    model = instantiate(cfg.model, **kwargs).to(device)
    cond = condition_batch(_demo_data(tuple(base)), "train", batch_size)
    n = len(cond["image"])
    idx = torch.arange(batch_size) % n
    batch = {k: v[idx] for k, v in cond.items()}
    if latent is not None:
        batch["latent"] = torch.randn(batch_size, c, size, size)
    return model, to_device(batch, device)


def train_step(model, batch, opt, autocast=contextlib.nullcontext, lightning: bool = True):
    """One training step by hand: the loss under `autocast()`, backward, AdamW; with `lightning`
    also what facediff's Lightning step adds around them (clipping at 1.0, the EMA update).
    Returns the loss, detached (no device sync)."""
    with autocast():
        loss = model.diffusion_loss(batch, model.generator)["loss"].mean()
    loss.backward()
    if lightning:
        torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if lightning:
        model.ema.step(model.trainable_parameters())
    return loss.detach()


def _rate(fn, n: int, device: torch.device) -> float:
    """Calls per second of `fn` over `n` calls, synchronised."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(device)
    return n / (time.perf_counter() - t0)


def bench_row(spec, device, precision: str, compiled: bool, b, base=(), flops=None) -> dict:
    """One model at one precision, eager or compiled. `flops`: the step's FLOPs per sample,
    counted on an eager row of the same model (a dispatch mode such as the FLOP counter does
    not see inside a compiled graph); None: counted here (eager only)."""
    on_cuda = device.type == "cuda"
    batch_size = int(spec.batch_cuda if on_cuda else spec.batch_cpu)
    model, batch = build(spec, device, batch_size, base)
    model.compile_denoiser = compiled
    model.apply_speed_options()
    opt = torch.optim.AdamW(model.trainable_parameters(), 1e-4, fused=on_cuda or None)

    def autocast():
        if precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    row = {
        "model": spec.name,
        "params_M": round(model.num_parameters() / 1e6, 2),
        "latent": list(spec.latent) if spec.get("latent") is not None else "pixels",
        "batch_size": batch_size,
        "precision": precision,
        "compiled": compiled,
    }
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    train_step(model, batch, opt, autocast)  # the first step compiles
    _sync(device)
    row["first_step_s"] = round(time.perf_counter() - t0, 2)
    for _ in range(b.paper_warmup):
        train_step(model, batch, opt, autocast)
    if flops is None:
        if compiled:
            raise ValueError("bench_row: count the FLOPs on the eager model first")
        with FlopCounterMode(display=False) as counter:
            train_step(model, batch, opt, autocast)
        flops = counter.get_total_flops() / batch_size
    steps_s = _rate(lambda: train_step(model, batch, opt, autocast), b.paper_steps, device)
    row["train_samples_s"] = round(steps_s * batch_size, 3)
    row["train_flops_per_sample"] = flops
    row["train_gflop_per_sample"] = round(flops / 1e9, 2)
    row["train_tflops"] = round(flops * steps_s * batch_size / 1e12, 4)
    if on_cuda:
        row["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    model.eval()
    cond = {k: v[: b.paper_sample_batch] for k, v in batch.items() if k != "latent"}
    for steps in b.paper_sample_steps:
        with torch.no_grad(), autocast():
            model.generate(cond, num_steps=steps)  # warm-up
            rate = _rate(lambda s=steps: model.generate(cond, num_steps=s), 1, device)
        row[f"sample_{steps}_steps_images_s"] = round(rate * len(cond["image"]), 3)
    row["guidance"] = "classifier-free, every condition (sampler.guidance_scale)"
    return row


def bench_paper_scale(b, base=()) -> dict:
    """The rows of `bench.paper_models` on `bench.device` at each precision the device runs
    natively, eager and (where `bench.paper_compile` says) compiled, with the matmul peaks.
    `base`: overrides composed before each row's (the run's data folder, say)."""
    from facediff.precision import cpu_bf16_native, resolve_device

    device = resolve_device(b.device)
    on_cuda = device.type == "cuda"
    bf16 = torch.cuda.is_bf16_supported() if on_cuda else cpu_bf16_native()
    precisions = [p for p in b.paper_precisions if p != "bf16" or bf16]
    compile_modes = [False]
    if b.paper_compile is True or (b.paper_compile == "auto" and on_cuda):
        compile_modes.append(True)
    sizes = b.paper_matmul_sizes_cuda if on_cuda else b.paper_matmul_sizes_cpu
    out = {
        "device": torch.cuda.get_device_name(device) if on_cuda else "cpu",
        "torch": torch.__version__,
        "matmul_peak_tflops": {
            p: round(matmul_peak_tflops(device, _DTYPES[p], list(sizes)), 4) for p in precisions
        },
        "rows": [],
    }
    for spec in b.paper_models:
        flops = None  # per sample, counted on the first (eager) row of the model
        for precision in precisions:
            for compiled in compile_modes:
                row = bench_row(spec, device, precision, compiled, b, base, flops)
                flops = row["train_flops_per_sample"]
                row["flop_utilisation"] = round(
                    row["train_tflops"] / out["matmul_peak_tflops"][precision], 4
                )
                log.info("%s", row)
                out["rows"].append(row)
                if on_cuda:
                    torch.cuda.empty_cache()
    return out


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def markdown(result: dict) -> str:
    """The rows as a Markdown table, the device and its matmul peaks above it."""
    peaks = ", ".join(f"{p} {v:.3g} TFLOP/s" for p, v in result["matmul_peak_tflops"].items())
    steps = [k.split("_")[1] for k in result["rows"][0] if k.startswith("sample_")]
    lines = [
        f"device: {result['device']} (torch {result['torch']}); matmul peak: {peaks}",
        "",
        "| model | params (M) | batch | precision | compiled | train samples/s | GFLOP/sample "
        f"| FLOP util. | sampling img/s ({' / '.join(steps)} steps) | peak memory (GB) "
        "| first step (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        s = [k for k in r if k.startswith("sample_")]
        lines.append(
            f"| {r['model']} | {r['params_M']} | {r['batch_size']} | {r['precision']} "
            f"| {'yes' if r['compiled'] else 'no'} | {r['train_samples_s']:.3g} "
            f"| {r['train_gflop_per_sample']:.3g} | {r['flop_utilisation']:.0%} "
            f"| {' / '.join(f'{r[k]:.3g}' for k in s)} | {r.get('peak_memory_gb', '-')} "
            f"| {r['first_step_s']} |"
        )
    return "\n".join(lines)


__all__ = ["CachedLatents", "bench_paper_scale", "markdown", "matmul_peak_tflops"]
