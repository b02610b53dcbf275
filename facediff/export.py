"""Export a facediff-train checkpoint as a diffusers pipeline folder (`facediff-export`).

The folder is `FaceDiffPipeline.save_pretrained`'s layout (model_index.json, denoiser/,
conditioner/, scheduler/, vae/ when there is one; weights as safetensors) plus the Python files
that define the pipeline and its custom components: `facediff.pipeline` and every facediff
module it imports, each shipped as `facediff_<name>.py` with its facediff imports made relative.
diffusers loads them with `DiffusionPipeline.from_pretrained(DIR, trust_remote_code=True)`
without facediff installed; the `facediff_` prefix keeps them apart from other pipelines' files in
diffusers' flat modules cache.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from facediff import checkpoint

_FROM = re.compile(r"^(\s*)from (facediff(?:\.\w+)+) import ", re.MULTILINE)
_ANY = re.compile(r"^\s*(?:from|import)\s+facediff\b", re.MULTILINE)
PIPELINE_MODULE = "facediff.pipeline"
COMPONENTS = ("denoiser", "conditioner")  # the custom components (each gets the files too)


def shipped_name(module: str) -> str:
    return "facediff_" + module.rsplit(".", 1)[-1]


def shipped_sources(root: str = PIPELINE_MODULE) -> dict[str, str]:
    """{file name: source} of `root` and every facediff module it imports (transitively), with
    `from facediff.x.y import` rewritten to `from .facediff_y import`."""
    todo, seen, out = [root], set(), {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            raise RuntimeError(f"export: cannot find the source of {module}")
        source = Path(spec.origin).read_text()
        todo += [m for _, m in _FROM.findall(source)]
        source = _FROM.sub(
            lambda m: f"{m.group(1)}from .{shipped_name(m.group(2))} import ", source
        )
        left = _ANY.search(source)
        if left:
            raise RuntimeError(
                f"export: {module} has an import the exporter cannot make relative: "
                f"{left.group(0).strip()!r} (write it as `from facediff.<module> import ...`)"
            )
        name = shipped_name(module) + ".py"
        if name in out:
            raise RuntimeError(f"export: two facediff modules would ship as {name}")
        out[name] = source
    # diffusers copies into its modules cache only the files that the entry file imports itself
    # (not theirs in turn), so the entry file names every shipped module
    entry = shipped_name(root) + ".py"
    names = sorted(n[:-3] for n in out if n != entry)
    lines = "".join(f"from .{n} import __name__ as _{n}  # noqa: E402\n" for n in names)
    head = "# facediff-export: every shipped module, so that diffusers copies them all\n"
    out[entry] = out[entry] + "\n\n" + head + lines
    return out


def component_specs(ckpt: dict, model) -> tuple[dict, dict]:
    """The denoiser's and the conditioner's configs, resolved, as the pipeline rebuilds them; a
    pretrained SegFormer's folder is replaced by its config (the weights come with the export)."""
    cfg = OmegaConf.create(checkpoint.run_record(ckpt).config)
    denoiser = OmegaConf.to_container(cfg.model.denoiser, resolve=True)
    conditioner = OmegaConf.to_container(cfg.model.conditioner, resolve=True)
    for name, enc in (conditioner.get("encoders") or {}).items():
        if isinstance(enc, dict) and enc.get("pretrained"):
            module = model.conditioner.encoders[name]
            enc["config"], enc["pretrained"] = module.segformer.config.to_dict(), None
    return denoiser, conditioner


def build_pipeline(ckpt: dict, use_ema: bool = True, path=None, model=None):
    """The FaceDiffPipeline of a loaded checkpoint (read from `path`), with the checkpoint's
    (EMA) weights; `model`: the checkpoint's model, built already."""
    from facediff.api import model_from_checkpoint
    from facediff.data.labels import MASK_CLASSES
    from facediff.models.autoencoders import PixelSpace
    from facediff.pipeline import FaceDiffConditioner, FaceDiffDenoiser, FaceDiffPipeline

    if model is None:
        model = model_from_checkpoint(ckpt, use_ema, path)
    den_spec, cond_spec = component_specs(ckpt, model)
    denoiser, conditioner = FaceDiffDenoiser(den_spec), FaceDiffConditioner(cond_spec)
    denoiser.model.load_state_dict(model.denoiser.state_dict())
    conditioner.model.load_state_dict(model.conditioner.state_dict())
    s = model.sampler
    options = dict(s.scheduler_options)
    if (
        model.objective.is_flow and s.solves_diffusion
    ):  # a multistep solver on the flow (sampling.Sampler)
        options |= {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
    scheduler = s.scheduler_cls.from_config(model.noise_scheduler.config, **options)
    ae = model.autoencoder
    pixel = isinstance(ae, PixelSpace)
    gs = dict(s.guidance_scale) if isinstance(s.guidance_scale, dict) else s.guidance_scale
    return FaceDiffPipeline(
        denoiser=denoiser.eval(),
        conditioner=conditioner.eval(),
        scheduler=scheduler,
        vae=None if pixel else ae.model,
        attribute_names=list(model.data_info["attr_names"]),
        mask_classes=list(MASK_CLASSES),
        image_size=model.image_size,
        latent_channels=ae.latent_channels,
        latent_size=ae.latent_size(model.image_size),
        scaling_factor=1.0 if pixel else float(ae.scaling_factor),
        sampler={
            "num_steps": int(s.num_steps),
            "eta": float(s.eta),
            "guidance_scale": gs,
            "clip_sample": s.clip_sample,
            "scheduler_options": dict(s.scheduler_options),
        },
    )


MODEL_CARD = """# facediff model (diffusers pipeline)

Exported by `facediff-export` from `{ckpt}` ({steps} training steps, {weights} weights).
Attributes: {attrs}. Image size: {size} px.

```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{out}", trust_remote_code=True)
images = pipe(attributes={{"{first}": 1}}, num_images=4, seed=0).images  # PIL images
```

`trust_remote_code=True` runs the Python files in this folder (facediff_*.py: the pipeline and
its denoiser and conditioner); read them first if the folder came from someone else. The
weights are safetensors.
"""


def export(ckpt_path, out, use_ema: bool = True, overwrite: bool = False) -> Path:
    """Write the pipeline folder `out` from a facediff-train checkpoint; returns its path.
    Written to a temporary folder beside `out` and renamed into place, so an interrupted export
    leaves no half-written pipeline; an existing `out` is replaced only with `overwrite=True`."""
    from facediff.api import load_checkpoint, model_from_checkpoint

    out = Path(out).expanduser().resolve()
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        if not overwrite:
            raise FileExistsError(f"out={out}: exists and is not empty; pass overwrite=true")
        if not (out / "model_index.json").is_file():
            raise FileExistsError(
                f"out={out}: exists and is not a pipeline folder (no model_index.json); "
                "refusing to replace it"
            )
    ckpt = load_checkpoint(ckpt_path)
    # built (its recorded config checked) before any folder exists: a refused checkpoint
    # leaves nothing behind
    model = model_from_checkpoint(ckpt, use_ema, ckpt_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    from facediff.models.sd import StableDiffusionUNet

    if isinstance(model.denoiser, StableDiffusionUNet):  # lora_sd2: the adapters alone
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        return _export_lora(ckpt, ckpt_path, model, use_ema, tmp, out)
    pipe = build_pipeline(ckpt, use_ema, ckpt_path, model)
    sources = shipped_sources()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pipe.save_pretrained(tmp)
        index = json.loads((tmp / "model_index.json").read_text())
        entry = shipped_name(PIPELINE_MODULE)
        index["_class_name"] = [entry, type(pipe).__name__]
        for name in COMPONENTS:
            index[name] = [entry, type(getattr(pipe, name)).__name__]
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        for folder in (tmp, *(tmp / name for name in COMPONENTS)):
            for file, source in sources.items():
                (folder / file).write_text(source)
        attrs = pipe.config.attribute_names
        (tmp / "README.md").write_text(
            MODEL_CARD.format(
                ckpt=Path(ckpt_path).name,
                steps=ckpt.get("global_step", "?"),
                weights="EMA" if use_ema else "raw",
                attrs=", ".join(attrs) or "none",
                size=pipe.config.image_size,
                out=out,
                first=attrs[0] if attrs else "Smiling",
            )
        )
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _replace(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


LORA_CARD = """# facediff LoRA for Stable Diffusion 2

Exported by `facediff-export` from `{ckpt}` ({steps} training steps, {weights} weights): LoRA
adapters on the UNet's attention (diffusers' format), trained with the attributes written as a
prompt, e.g. "{example}".

```python
from diffusers import StableDiffusionPipeline

pipe = StableDiffusionPipeline.from_pretrained("{pretrained}")
pipe.load_lora_weights("{out}")
image = pipe("{example}", guidance_scale={gs}).images[0]
```
"""


def _export_lora(ckpt: dict, ckpt_path, model, use_ema: bool, tmp: Path, out: Path) -> Path:
    """A lora_sd2 checkpoint: its adapters in diffusers' LoRA format (no code to ship: a stock
    StableDiffusionPipeline reads them with load_lora_weights)."""
    import torch

    from facediff.models.sd import save_lora

    try:
        save_lora(model.denoiser, tmp)
        enc = model.conditioner.encoders["attrs"]
        names = enc.attributes[:2]
        example = enc.prompts(
            {
                "attrs": torch.ones(1, len(enc.attributes)),
                "attrs_known": torch.zeros(1, len(enc.attributes), dtype=torch.bool).index_fill_(
                    1, torch.arange(len(names)), True
                ),
            }
        )[0]
        gs = model.sampler.guidance_scale
        (tmp / "README.md").write_text(
            LORA_CARD.format(
                ckpt=Path(ckpt_path).name,
                steps=ckpt.get("global_step", "?"),
                weights="EMA" if use_ema else "raw",
                example=example,
                pretrained=model.pretrained,
                out=out,
                gs=gs if not isinstance(gs, dict) else gs.get("attrs", 7.5),
            )
        )
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
