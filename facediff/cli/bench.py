"""facediff-bench: data preparation, loader and training-step throughput, side by side."""

from __future__ import annotations

import json
import logging
import shutil
import time
from functools import partial
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from facediff.cli.bench_scale import train_step
from facediff.config import instantiate, register_resolvers

log = logging.getLogger("facediff.bench")


def bench_synthfaces(num_faces: int, resolutions, out: Path) -> dict:
    """Seconds to generate `num_faces` SynthFaces and to prepare them at each resolution."""
    from facediff.data.prepared import prepare
    from facediff.data.synthfaces import SynthFaces, write_synthfaces

    raw = out / "synthfaces_raw"
    t0 = time.perf_counter()
    write_synthfaces(raw, num_faces, image_size=128, mask_size=128, num_workers=2)
    result = {"generate_s": time.perf_counter() - t0}
    for r in resolutions:
        t0 = time.perf_counter()
        prepare(SynthFaces(str(raw), num_faces=num_faces), out / f"prep_{r}", r, progress=False)
        result[f"prepare_{r}px_s"] = time.perf_counter() - t0
    return result


def bench_loader(out: Path, resolution: int, items: int) -> dict:
    """Samples/s of the prepared (memory-mapped) reader against decoding the JPEG and merging
    the part PNGs per sample, the same items, one process."""
    from facediff.data.datamodule import FaceDataModule
    from facediff.data.synthfaces import SynthFaces

    dm = FaceDataModule(str(out / f"prep_{resolution}"), resolution, verify_hash=False)
    ds = dm.dataset("train")
    src = SynthFaces(str(out / "synthfaces_raw"), num_faces=dm.data.meta["num_items"])
    n = min(items, len(ds))
    for i in range(min(10, n)):  # warm-up: first-call costs and the page cache, for both
        ds[(i, False)]
        src.load(int(ds.indices[i]), resolution)
    t0 = time.perf_counter()
    for i in range(n):
        ds[(i, i % 2 == 0)]
    prepared = n / (time.perf_counter() - t0)
    idx = ds.indices[:n]
    t0 = time.perf_counter()
    for i in idx:
        src.load(int(i), resolution)
    raw = n / (time.perf_counter() - t0)
    return {
        "resolution": resolution,
        "prepared_samples_s": prepared,
        "png_decode_samples_s": raw,
        "speedup": prepared / raw,
    }


def _batch(cfg: DictConfig) -> dict:
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    return next(iter(datamodule.train_dataloader()))


def _model_and_batch(cfg: DictConfig):
    batch = _batch(cfg)
    return instantiate(cfg.model), batch


def bench_train_step(cfg: DictConfig, steps: int) -> dict:
    """Training steps/s of the configured model, fp32 against bf16 autocast, same batch, and
    the precision `trainer.precision=auto` chooses on this machine (with its reason)."""
    from facediff.precision import choose_precision

    model, batch = _model_and_batch(cfg)
    opt = torch.optim.AdamW(model.trainable_parameters(), 1e-4)
    result = {"params_M": model.num_parameters() / 1e6, "batch_size": len(batch["image"])}
    for name, enabled in (("fp32", False), ("bf16", True)):
        n = steps if not enabled or torch.ops.mkldnn._is_mkldnn_bf16_supported() else 2
        autocast = partial(torch.autocast, "cpu", dtype=torch.bfloat16, enabled=enabled)
        for i in range(n + 2):
            if i == 2:
                t0 = time.perf_counter()
            train_step(model, batch, opt, autocast, lightning=False)
        result[f"{name}_steps_s"] = n / (time.perf_counter() - t0)
        result[f"{name}_timed_steps"] = n
    result["bf16_speedup"] = result["bf16_steps_s"] / result["fp32_steps_s"]
    result["auto_precision"], result["auto_reason"] = choose_precision("cpu")
    return result


LEVERS = {  # name: (LatentDiffusion options, AdamW options)
    "eager": ({}, {}),
    "channels_last": ({"channels_last": True}, {}),
    "fused_adamw": ({}, {"fused": True}),
    "foreach_adamw": ({}, {"foreach": True}),
    "compiled": ({"compile_denoiser": True}, {}),
}


def bench_levers(cfg: DictConfig, steps: int, rounds: int, levers, precisions) -> dict:
    """The training step (loss, backward, AdamW) with each speed lever against eager, in one
    process: every variant a fresh model from the same seed and the same batch, the variants
    timed in turn `rounds` times (`steps` steps each) so that a machine's drift falls on all of
    them alike; the median round's steps/s, its ratio to eager, and the first step's seconds
    (compiling). bf16 only where this CPU has it natively."""
    from facediff.precision import choose_precision

    out = {"auto_precision": choose_precision("cpu")[0], "variants": {}}
    native_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    for precision in precisions:
        if precision == "bf16" and not native_bf16:
            out[precision] = "skipped: no native bf16 on this CPU"
            continue
        runs, batch = {}, _batch(cfg)
        for name in levers:
            model_opts, opt_opts = LEVERS[name]
            torch.manual_seed(0)
            model = instantiate(cfg.model)
            for k, v in model_opts.items():
                setattr(model, k, v)
            model.apply_speed_options()
            opt = torch.optim.AdamW(model.trainable_parameters(), 1e-4, **opt_opts)
            runs[name] = (model, batch, opt)

        autocast = partial(
            torch.autocast, "cpu", dtype=torch.bfloat16, enabled=precision == "bf16"
        )

        def step(model, batch, opt, autocast=autocast):
            return float(train_step(model, batch, opt, autocast, lightning=False))

        first, losses = {}, {}
        for name, run in runs.items():  # warm-up: the first step compiles
            t0 = time.perf_counter()
            losses[name] = step(*run)
            first[name] = time.perf_counter() - t0
            step(*run)
        rates = {name: [] for name in runs}
        for _ in range(rounds):
            for name, run in runs.items():
                t0 = time.perf_counter()
                for _ in range(steps):
                    step(*run)
                rates[name].append(steps / (time.perf_counter() - t0))
        median = {n: sorted(r)[len(r) // 2] for n, r in rates.items()}
        out["variants"][precision] = {
            n: {
                "steps_s": median[n],
                "vs_eager": median[n] / median["eager"],
                "first_step_s": first[n],
                "first_loss": losses[n],
            }
            for n in runs
        }
    return out


def _bare_step(model, batch, opt, sched, parts: dict | None = None) -> None:
    """What Lightning does in one LatentDiffusion step, by hand: loss, backward, the non-finite
    check, gradient clipping (trainer.gradient_clip_val=1.0), AdamW, LR schedule, EMA."""

    def mark(name, t0):
        if parts is not None:
            parts[name] = parts.get(name, 0.0) + time.perf_counter() - t0
        return time.perf_counter()

    t = time.perf_counter()
    z0 = model.encode(batch)
    b, obj = z0.shape[0], model.objective
    tt = obj.sample_t(b, model.generator)
    eps = torch.randn(z0.shape, generator=model.generator)
    zt, target = obj.noise(z0, eps, tt), obj.target(z0, eps, tt)
    drop = model.conditioner.sample_drop(b, model.generator, z0.device)
    t = mark("noise", t)
    cond = model.conditioner(batch, drop=drop, spatial_size=z0.shape[-2:])
    t = mark("condition encoding", t)
    pred = model.denoiser(zt, obj.model_time(tt), cond)
    t = mark("denoiser forward", t)
    loss = model.loss(pred, target, obj.snr(tt), batch, obj.prediction_type)["loss"].mean()
    t = mark("loss", t)
    loss.backward()
    t = mark("backward", t)
    model.on_before_optimizer_step(opt)
    t = mark("non-finite check", t)
    torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), 1.0)
    t = mark("gradient clipping", t)
    opt.step()
    opt.zero_grad()
    sched.step()
    t = mark("optimizer + LR schedule", t)
    model.ema.step(model.trainable_parameters())
    mark("EMA update", t)


def bench_lightning_overhead(cfg: DictConfig, steps: int) -> dict:
    """The same model, batch and work per step (fp32), as Lightning's fit against the bare loop
    of `_bare_step`: steps/s of both, their ratio, and where the bare step's time goes."""
    import lightning as L

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == 2:
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, *args):
            self.t1 = time.perf_counter()

    model, batch = _model_and_batch(cfg)
    opt, sched = model.configure_optimizers().values()
    sched = sched["scheduler"]
    parts: dict = {}
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        _bare_step(model, batch, opt, sched, parts if i >= 2 else None)
    bare = steps / (time.perf_counter() - t0)

    model, batch = _model_and_batch(cfg)
    timer = Timer()
    trainer = L.Trainer(
        accelerator="cpu",
        precision="32-true",
        max_steps=steps + 2,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    )
    loader = torch.utils.data.DataLoader([batch] * (steps + 2), batch_size=None)
    trainer.fit(model, train_dataloaders=loader)
    lightning = steps / (timer.t1 - timer.t0)
    total = sum(parts.values())
    return {
        "bare_steps_s": bare,
        "lightning_steps_s": lightning,
        "lightning_overhead": bare / lightning - 1,
        "bare_step_breakdown": {k: round(v / total, 4) for k, v in parts.items()},
    }


def bench_denoisers(sets, steps: int) -> list[dict]:
    """Parameters and fp32 training steps/s (forward, backward, AdamW) of denoiser options,
    each on random inputs of its set's resolution and batch, one token of condition."""
    from facediff.config import compose
    from facediff.models.denoiser import Condition

    rows = []
    for group in sets:
        for option in group["options"]:
            overrides = list(group.get("base", [])) + option.split()
            cfg = compose("train", overrides + [f"data.resolution={group['resolution']}"])
            den = instantiate(cfg.denoiser)
            b, g = group["batch"], torch.Generator().manual_seed(0)
            c = den.in_channels
            zt = torch.randn(b, c, den.sample_size, den.sample_size, generator=g)
            spatial = den.extra_in_channels or None
            cond = Condition(
                tokens=torch.randn(b, 1, den.cross_attention_dim, generator=g),
                token_mask=torch.ones(b, 1, dtype=torch.bool),
                vector=torch.randn(b, den.vector_dim, generator=g) if den.vector_dim else None,
                spatial=torch.randn(b, spatial, *zt.shape[-2:], generator=g) if spatial else None,
            )
            t = torch.randint(0, 1000, (b,), generator=g)
            opt = torch.optim.AdamW(den.parameters(), 1e-4)
            for i in range(steps + 1):
                if i == 1:
                    t0 = time.perf_counter()
                den(zt, t, cond).square().mean().backward()
                opt.step()
                opt.zero_grad()
            rows.append(
                {
                    "denoiser": option,
                    "resolution": group["resolution"],
                    "batch_size": b,
                    "params_M": sum(p.numel() for p in den.parameters()) / 1e6,
                    "steps_s": steps / (time.perf_counter() - t0),
                }
            )
            log.info("%s", rows[-1])
    return rows


def bench_checkpoint_integrity(out: Path, megabytes: int = 100) -> dict:
    """Seconds to check the CRC-32 of every record of a `megabytes` checkpoint (what every
    facediff load does) against the weights-only torch.load itself."""
    from facediff import checkpoint

    path = out / "integrity.ckpt"
    checkpoint.atomic_save({"w": torch.randn(megabytes * 2**20 // 4)}, path)
    for _ in range(2):  # the second round with the file in the page cache, as a load has it
        t0 = time.perf_counter()
        checkpoint.verify(path)
        verify_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        torch.load(path, map_location="cpu", weights_only=True)
        load_s = time.perf_counter() - t0
    path.unlink()
    return {"megabytes": megabytes, "verify_s": verify_s, "load_s": load_s}


def bench(cfg: DictConfig) -> dict:
    register_resolvers()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    b = cfg.bench
    out = Path(b.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    if "synthfaces" in b.what or "loader" in b.what:
        results["synthfaces"] = bench_synthfaces(b.num_faces, list(b.resolutions), out)
    if "loader" in b.what:
        results["loader"] = [bench_loader(out, r, b.loader_items) for r in b.resolutions]
    if "train_step" in b.what:
        results["train_step"] = bench_train_step(cfg, b.train_steps)
    if "levers" in b.what:
        results["levers"] = bench_levers(
            cfg, b.lever_steps, b.lever_rounds, list(b.levers), list(b.lever_precisions)
        )
    if "lightning" in b.what:
        results["lightning"] = bench_lightning_overhead(cfg, b.train_steps)
    if "checkpoint" in b.what:
        results["checkpoint"] = bench_checkpoint_integrity(out, b.checkpoint_mb)
    if "denoisers" in b.what:
        results["denoisers"] = bench_denoisers(b.denoiser_sets, b.denoiser_steps)
    if "paper" in b.what:
        from facediff.cli.bench_scale import bench_paper_scale, markdown

        base = [f"paths.data_dir={cfg.paths.data_dir}", *b.paper_base]
        results["paper"] = bench_paper_scale(b, base)
        (out / "paper.md").write_text(markdown(results["paper"]) + "\n")
        log.info("paper scale:\n%s", markdown(results["paper"]))
    shutil.rmtree(out / "synthfaces_raw", ignore_errors=True)
    for r in b.resolutions:
        shutil.rmtree(out / f"prep_{r}", ignore_errors=True)
    (out / "bench.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return results


@hydra.main(version_base="1.3", config_path="pkg://facediff.conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    log.info("bench config:\n%s", OmegaConf.to_yaml(cfg.bench))
    bench(cfg)


if __name__ == "__main__":
    main()
