"""Shared fixtures: the real configs composed and shrunk (CPU, tiny models, 16 px SynthFaces)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, len(os.sched_getaffinity(0))))  # the cores this run may use

TINY = [
    "data.resolution=16",
    "data.source.num_faces=48",
    "data.source.image_size=32",
    "data.source.mask_size=32",
    "data.source.num_workers=1",
    "data.batch_size=4",
    "data.verify_hash=false",
    "denoiser.block_out_channels=[16,32]",
    "denoiser.layers_per_block=1",
    "denoiser.attention_levels=[false,true]",
    "denoiser.cross_attention_dim=32",
    "denoiser.head_dim=8",
    "denoiser.norm_num_groups=8",
    "sampler.num_steps=2",
    "trainer.accelerator=cpu",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "logger=csv",
    "~callbacks.progress_bar",
    "callbacks.sample_grid.num_steps=2",
    "callbacks.sample_grid.num_conditions=2",
    "callbacks.sample_grid.samples_per_condition=2",
    "callbacks.fidelity.every_n_steps=0",
]

# TINY's denoiser options are the UNet's; a `denoiser=dit_*` run takes these instead
TINY_DIT = [
    "denoiser.hidden_size=32",
    "denoiser.depth=2",
    "denoiser.num_heads=2",
    "denoiser.cross_attention_dim=32",
]


def experiment_override(name: str, group: str = "denoiser") -> str | None:
    """The option of `group` an experiment file selects (`override /<group>: ...`), through
    the experiments it builds on, if any."""
    import yaml

    path = Path(__file__).parents[1] / "conf" / "experiment" / f"{name}.yaml"
    entries = (yaml.safe_load(path.read_text()) or {}).get("defaults", [])
    for entry in entries:
        if isinstance(entry, dict) and f"override /{group}" in entry:
            return entry[f"override /{group}"]
    for entry in entries:  # `- demo`: an experiment it builds on
        if isinstance(entry, str) and (path.parent / f"{entry}.yaml").is_file():
            return experiment_override(entry, group)
    return None


# TINY's data.source options are SynthFaces'; SynthPeople (data=synthpeople) takes these
TINY_PEOPLE = ["data.source.num_people=48"]


def tiny(overrides) -> list[str]:
    """TINY, with the DiT's shrunk options in place of the UNet's for `denoiser=dit_*` (given,
    or selected by the experiment)."""
    experiments = [o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")]
    names = [experiment_override(e) for e in experiments]
    names = [n for n in names if n] + [
        o.split("=", 1)[1] for o in overrides if o.startswith("denoiser=")
    ]
    tiny = TINY
    if names and names[-1].startswith("dit"):
        tiny = [o for o in TINY if not o.startswith("denoiser.")] + TINY_DIT
    data = [experiment_override(e, "data") for e in experiments]
    data += [o.split("=", 1)[1] for o in overrides if o.startswith("data=")]
    if data and data[-1] == "synthpeople":
        tiny = [o for o in tiny if not o.startswith("data.source.")] + TINY_PEOPLE
    return tiny


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One SynthFaces raw folder and its 16 px prepared copy for the whole session."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def make_cfg(data_dir, tmp_path):
    """compose(train.yaml, overrides) shrunk to tiny sizes, writing into tmp_path."""
    from facediff.config import compose

    def make(*overrides: str, config_name: str = "train"):
        base = [f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path / 'run'}"]
        return compose(config_name, base + tiny(overrides) + list(overrides))

    return make
