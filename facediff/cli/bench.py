"""facediff-bench: data preparation, loader and training-step throughput, side by side."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from facediff.config import instantiate, register_resolvers

log = logging.getLogger("facediff.bench")


def bench_synthfaces(num_faces: int, resolutions, out: Path) -> dict:
    """Seconds to generate `num_faces` SynthFaces and to prepare them at each resolution."""
    from facediff.data.celebamask import SynthFaces
    from facediff.data.prepared import prepare
    from facediff.data.synthfaces import write_synthfaces

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
    from facediff.data.celebamask import SynthFaces
    from facediff.data.datamodule import FaceDataModule

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


def bench_train_step(cfg: DictConfig, steps: int) -> dict:
    """Training steps/s of the configured model, fp32 against bf16 autocast, same batch."""
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    model = instantiate(cfg.model)
    batch = next(iter(datamodule.train_dataloader()))
    opt = torch.optim.AdamW(model.trainable_parameters(), 1e-4)
    result = {"params_M": model.num_parameters() / 1e6, "batch_size": len(batch["image"])}
    for name, enabled in (("fp32", False), ("bf16", True)):
        for i in range(steps + 3):
            if i == 3:
                t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                loss = model.diffusion_loss(batch, model.generator)["loss"].mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
        result[f"{name}_steps_s"] = steps / (time.perf_counter() - t0)
    result["bf16_speedup"] = result["bf16_steps_s"] / result["fp32_steps_s"]
    result["bf16_samples_s"] = result["bf16_steps_s"] * result["batch_size"]
    return result


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
