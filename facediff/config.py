"""Hydra/OmegaConf glue: resolvers used by conf/ and a compose helper for notebooks and tests."""

from __future__ import annotations

from omegaconf import OmegaConf


def _attr_count(attributes, default):
    return len(attributes) if attributes else int(default)


def _rendered_attributes():
    from facediff.data.synthfaces import RENDERED_ATTRIBUTES

    return list(RENDERED_ATTRIBUTES)


def register_resolvers() -> None:
    """`${div:a,b}`, `${attr_count:${data.attributes},40}`, `${synthfaces_rendered:}`."""
    resolvers = {
        "div": lambda a, b: int(a) // int(b),
        "attr_count": _attr_count,
        "synthfaces_rendered": _rendered_attributes,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def compose(config_name: str = "train", overrides: list[str] | None = None):
    """Compose a config from facediff's conf/ outside a Hydra main (notebooks, tests)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module("facediff.conf", version_base="1.3"):
        return hydra_compose(config_name, overrides=overrides or [], return_hydra_config=False)


register_resolvers()
