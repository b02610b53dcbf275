"""Hydra/OmegaConf glue: resolvers used by conf/ and a compose helper for notebooks and tests."""

from __future__ import annotations

from omegaconf import OmegaConf


def _attr_count(attributes, default):
    return len(attributes) if attributes else int(default)


def _rendered_attributes():
    from facediff.data.face_renderer import RENDERED_ATTRIBUTES

    return list(RENDERED_ATTRIBUTES)


SLURM_PER_TASK = {  # what a SLURM job asks for per device: on GPUs, on CPUs
    "cpus_per_task": (8, 1),  # a GPU's data loaders; a single-threaded CPU rank
    "mem_gb": (32, 4),  # per node: this many GB per device (task)
}


def _slurm(what: str, accelerator, devices):
    """`${slurm:<field>,${trainer.accelerator},${trainer.devices}}`: a SLURM launcher's
    resources from the trainer's (conf/launcher/slurm_ddp.yaml)."""
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ValueError(
            f"trainer.devices={devices!r}: a SLURM launcher starts one task per device, so name "
            "the number of devices per node (an integer >= 1), not -1 or 'auto'"
        )
    gpu = str(accelerator) in ("gpu", "cuda", "auto")
    if what == "tasks_per_node":
        return devices
    if what == "gpus_per_node":
        return devices if gpu else None  # a CPU job asks for no GPU
    if what in SLURM_PER_TASK:
        per_gpu, per_cpu = SLURM_PER_TASK[what]
        each = per_gpu if gpu else per_cpu
        return each * devices if what == "mem_gb" else each
    raise ValueError(
        f"${{slurm:{what},...}}: one of tasks_per_node, gpus_per_node, {list(SLURM_PER_TASK)}"
    )


def register_resolvers() -> None:
    """`${div:a,b}`, `${attr_count:${data.attributes},40}`, `${synthfaces_rendered:}`,
    `${slurm:<field>,<accelerator>,<devices>}`."""
    resolvers = {
        "div": lambda a, b: int(a) // int(b),
        "attr_count": _attr_count,
        "synthfaces_rendered": _rendered_attributes,
        "slurm": _slurm,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def instantiate(cfg, **kwargs):
    """hydra.utils.instantiate that lets facediff's own errors through unwrapped, so the user
    reads "denoiser.sample_size=8 does not match ..." rather than Hydra's wrapper around it."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(cfg, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, (ValueError, FileNotFoundError)):
            raise cause from None
        raise


# ------------------------------------------------------- configs read from a file, untrusted
class UnsafeConfigError(ValueError):
    """A config read from a file (a checkpoint's recorded config) names code facediff does not
    build from files; names the key and the target."""


# What a model may be built from when its config comes from a file someone hands you (a
# checkpoint's recorded config): facediff's model parts and the few library classes they take.
# Everything else (a Trainer, a logger, a callback, a data set that writes files, and any
# function such as torch.load or os.system) is refused, wherever it stands in the tree.
MODEL_TARGETS = frozenset(
    {
        "facediff.lit.diffusion.LatentDiffusion",
        *(
            f"facediff.models.conditioning.{n}"
            for n in (
                "Conditioner", "AttributeEncoder", "MaskResNetEncoder", "SegFormerMaskEncoder",
                "ControlEncoder", "MaskConcatEncoder", "NullConditioner",
            )
        ),
        "facediff.models.autoencoders.DiffusersAutoencoder",
        "facediff.models.autoencoders.PixelSpace",
        "facediff.models.unet.UNet",
        "facediff.models.dit.DiT",
        "facediff.models.sd.StableDiffusionUNet",
        "facediff.models.sd.PromptEncoder",
        "facediff.models.sd.scheduler_from_pretrained",
        *(
            f"facediff.diffusion.losses.{n}"
            for n in ("DiffusionLoss", "P2Weighting", "NoWeighting", "MinSNRWeighting")
        ),
        *(
            f"facediff.diffusion.objectives.{n}"
            for n in ("Epsilon", "VPrediction", "Sample", "Flow")
        ),
        "facediff.diffusion.sampling.Sampler",
        "diffusers.DDPMScheduler",
        "diffusers.FlowMatchEulerDiscreteScheduler",
    }
)  # fmt: skip
HYDRA_KEYS = frozenset({"_target_", "_partial_", "_convert_", "_recursive_", "_args_"})


def _optimizer_class(target: str) -> bool:
    """torch.optim.<Optimizer subclass> (a model's `optimizer`, built `_partial_`)."""
    import torch

    module, _, name = target.rpartition(".")
    cls = getattr(torch.optim, name, None) if module == "torch.optim" else None
    return isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)


def _scheduler_class(path) -> bool:
    """diffusers.<a scheduler class>: what `hydra.utils.get_class` may name (a sampler's)."""
    import diffusers

    module, _, name = str(path).rpartition(".")
    cls = getattr(diffusers, name, None) if module == "diffusers" else None
    return isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)


def check_buildable(node, where: str, allowed=MODEL_TARGETS) -> None:
    """Refuse a config tree that would run anything but building `allowed` classes from plain
    values: any other `_target_`, a special key Hydra would act on, an interpolation (a
    resolver is code), or a value that is not a string, number, bool, None, list or dict.
    Raises UnsafeConfigError naming the key (`where.a.b`) and what it held."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}.{key}"
            if not isinstance(key, str):
                raise UnsafeConfigError(f"{here}: a key that is not a string ({key!r})")
            if key.startswith("_") and key.endswith("_") and key not in HYDRA_KEYS:
                raise UnsafeConfigError(f"{here}: {key} is not a key facediff builds from")
            if key == "_target_":
                target = str(value)
                ok = target in allowed or _optimizer_class(target)
                if target == "hydra.utils.get_class":
                    ok = _scheduler_class(node.get("path"))
                    if not ok:
                        raise UnsafeConfigError(
                            f"{where}.path={node.get('path')!r}: hydra.utils.get_class may only "
                            "name a diffusers scheduler class in a config read from a file"
                        )
                if not ok:
                    raise UnsafeConfigError(
                        f"{here}={target!r}: refused: a config read from a file builds only "
                        "facediff's model classes (facediff.config.MODEL_TARGETS), never other "
                        "code; if you trust the file and wrote that class, pass "
                        f"allow_targets=[{target!r}]"
                    )
                continue
            check_buildable(value, here, allowed)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_buildable(value, f"{where}[{i}]", allowed)
    elif isinstance(node, str):
        if "${" in node:
            raise UnsafeConfigError(
                f"{where}={node!r}: an interpolation in a config read from a file (a resolver "
                "could run code; facediff records configs resolved)"
            )
    elif node is not None and not isinstance(node, (bool, int, float)):
        raise UnsafeConfigError(f"{where}: a {type(node).__name__}, not a plain value")


def instantiate_untrusted(config, where: str, allow_targets=(), **kwargs):
    """`instantiate` for a config read from a file someone may have handed you (a checkpoint's
    recorded `model`): `check_buildable` first, against MODEL_TARGETS plus `allow_targets`
    (the user's explicit opt-in for classes of their own)."""
    if OmegaConf.is_config(config):
        config = OmegaConf.to_container(config, resolve=False)
    check_buildable(config, where, MODEL_TARGETS | frozenset(allow_targets))
    return instantiate(OmegaConf.create(config), **kwargs)


# groups train.yaml declares in its defaults (null there), so `launcher=slurm_ddp` needs no `+`
DEFAULTS_GROUPS = ("launcher", "study", "search")


def group_overrides(overrides: list[str]) -> list[str]:
    """`+launcher=x`, `+study=x`, `+search=x` (the spelling from before these groups were in
    train.yaml's defaults, which Hydra would now refuse) as `launcher=x` etc."""
    out = []
    for o in overrides:
        group = o[1:].split("=", 1)[0] if o.startswith("+") and not o.startswith("++") else ""
        out.append(o[1:] if group in DEFAULTS_GROUPS else o)
    return out


def compose(config_name: str = "train", overrides: list[str] | None = None):
    """Compose a config from facediff's conf/ outside a Hydra main (notebooks, tests)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    if config_name == "train":
        overrides = group_overrides(overrides or [])
    if GlobalHydra.instance().is_initialized():  # inside a facediff Hydra main: same search path
        return hydra_compose(config_name, overrides=overrides or [], return_hydra_config=False)
    with initialize_config_module("facediff.conf", version_base="1.3"):
        return hydra_compose(config_name, overrides=overrides or [], return_hydra_config=False)


register_resolvers()


def _check_value(value, hint) -> bool:
    """True when `value` fits a simple annotation (unions, int/float/bool/str, lists, tuples);
    annotations it does not understand pass."""
    import types
    import typing

    origin = typing.get_origin(hint)
    if hint is typing.Any or hint is None:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_check_value(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple) or hint in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


def validate(cfg, path: str = "") -> None:
    """Check every `_target_` node of a config against its constructor before anything is built:
    unknown option names and values of the wrong type raise a ValueError naming the option,
    what was expected and (for unknown names) the valid ones."""
    import inspect
    import typing

    from hydra.utils import get_object
    from omegaconf import DictConfig, ListConfig

    if isinstance(cfg, ListConfig):
        for i, item in enumerate(cfg):
            validate(item, f"{path}[{i}]")
        return
    if not isinstance(cfg, DictConfig):
        return
    target = cfg.get("_target_") if "_target_" in cfg else None
    if isinstance(target, str) and target.startswith("facediff."):
        obj = get_object(target)
        fn = obj.__init__ if inspect.isclass(obj) else obj
        params = inspect.signature(fn).parameters
        takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # noqa: BLE001 - unresolvable annotations: names are still checked
            hints = {}
        for key in cfg:
            if key.startswith("_"):
                continue
            where = f"{path}.{key}" if path else key
            if key not in params and not takes_kwargs:
                valid = [p for p in params if p not in ("self", "args", "kwargs")]
                raise ValueError(f"unknown option {where}; {target} takes {valid}")
            if key in hints and not OmegaConf.is_missing(cfg, key):
                value = cfg[key]
                if isinstance(value, DictConfig) and "_target_" in value:
                    continue  # an object built from its own node, checked below
                if OmegaConf.is_config(value):
                    value = OmegaConf.to_container(value, resolve=True)
                if not _check_value(value, hints[key]):
                    raise ValueError(
                        f"option {where}={value!r} ({type(value).__name__}): expected "
                        f"{getattr(hints[key], '__name__', str(hints[key]))}"
                    )
    for key in cfg:
        if isinstance(key, str) and not key.startswith("_") and key != "hydra":
            try:
                child = cfg[key]
            except Exception:  # noqa: BLE001 - interpolations resolved later, e.g. ${hydra:...}
                continue
            validate(child, f"{path}.{key}" if path else key)
