"""The training spine through the real configs: every experiment, checkpoints, resume, sampling."""

from pathlib import Path

import numpy as np
import pytest
import torch

from facediff import checkpoint
from facediff.api import FaceGenerator
from facediff.cli.train import train

EXPERIMENTS = sorted(
    p.stem
    for p in (Path(__file__).parents[2] / "conf" / "experiment").glob("*.yaml")
    # latent64 needs its autoencoder first (tests/data/test_latents.py); lora_sd2 a pretrained
    # Stable Diffusion folder (tests/models/test_lora_sd2.py builds a tiny one)
    if p.stem not in ("latent64", "lora_sd2")
)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_fast_dev_run(make_cfg, experiment):
    cfg = make_cfg(f"experiment={experiment}", "trainer.fast_dev_run=true", "logger=csv")
    metrics = train(cfg)
    assert np.isfinite(metrics["train/loss"])


@pytest.mark.parametrize("conditioner", ["attr_tokens", "mask_segformer", "multi_control"])
def test_other_conditioners_run(make_cfg, conditioner):
    extra = ["conditioner.encoders.mask.sr_ratios=[1,1,1,1]"] if "segformer" in conditioner else []
    cfg = make_cfg(f"conditioner={conditioner}", "trainer.fast_dev_run=true", *extra)
    assert np.isfinite(train(cfg)["train/loss"])


def last_ckpt(cfg) -> Path:
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


def test_checkpoint_sample_round_trip(make_cfg, tmp_path):
    cfg = make_cfg("conditioner=attr_mask_concat")
    train(cfg)
    assert (Path(cfg.paths.output_dir) / "samples").glob("step_*.png")
    gen = FaceGenerator.from_checkpoint(last_ckpt(cfg))
    assert gen.conditions == ["attrs", "mask"]
    mask = np.zeros((16, 16), np.int64)
    mask[4:12, 4:12] = 1
    a = gen.sample(attributes={"Smiling": 1, "Eyeglasses": 0}, mask=mask, num_samples=2, seed=3)
    b = gen.sample(attributes={"Smiling": 1, "Eyeglasses": 0}, mask=mask, num_samples=2, seed=3)
    assert a.shape == (2, 16, 16, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert gen.sample(attributes={"Smiling": 1}, num_samples=1).shape == (1, 16, 16, 3)
    with pytest.raises(ValueError, match="unknown name 'Smilling'"):
        gen.sample(attributes={"Smilling": 1})

    from facediff.cli.sample import sample
    from facediff.config import compose

    out = tmp_path / "sampled"
    scfg = compose(
        "sample",
        [
            f"ckpt_path={last_ckpt(cfg)}",
            f"output_dir={out}",
            "from_split=val",
            "num_conditions=2",
            "num_samples=2",
            "num_steps=2",
            "guidance_scale={attrs: 2.0, mask: 1.0}",
        ],
    )
    assert sample(scfg).is_file() and len(list((out / "samples").glob("*.png"))) == 4


def state(ckpt_path):
    ckpt = checkpoint.load(ckpt_path)
    return ckpt


def test_resume_mid_epoch_continues_exactly(make_cfg, tmp_path):
    """4 steps straight == 2 steps, then resume from last.ckpt for 2 more: weights, EMA,
    optimizer state, step count and data order all bitwise equal."""
    common = [
        "conditioner=attr_mask_concat",
        "trainer.val_check_interval=2",
        "callbacks.sample_grid.every_n_steps=0",
    ]
    straight = make_cfg(*common, "trainer.max_steps=4", f"paths.output_dir={tmp_path / 'a'}")
    train(straight)
    first = make_cfg(*common, "trainer.max_steps=2", f"paths.output_dir={tmp_path / 'b'}")
    train(first)
    half = state(last_ckpt(first))
    assert half["global_step"] == 2
    resumed = make_cfg(
        *common,
        "trainer.max_steps=4",
        f"paths.output_dir={tmp_path / 'c'}",
        f"ckpt_path={last_ckpt(first)}",
    )
    train(resumed)
    a, c = state(last_ckpt(straight)), state(last_ckpt(resumed))
    assert a["global_step"] == c["global_step"] == 4
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], c["state_dict"][k]), k
    for x, y in zip(a["ema"]["shadow_params"], c["ema"]["shadow_params"]):
        assert torch.equal(x, y)
    assert a["ema"]["optimization_step"] == c["ema"]["optimization_step"] == 4
    for s1, s2 in zip(
        a["optimizer_states"][0]["state"].values(), c["optimizer_states"][0]["state"].values()
    ):
        assert torch.equal(s1["exp_avg"], s2["exp_avg"])
    assert not torch.equal(half["state_dict"][k], a["state_dict"][k])  # it did train


def test_small_autoencoder_route(make_cfg, tmp_path, data_dir):
    """experiment=autoencoder writes a save_pretrained folder; autoencoder=small_kl trains on
    its latents and samples decode back to images. The checkpoint leaves the frozen autoencoder
    out, names its folder and its sha256; other weights in that folder are refused by name,
    for sampling and for resuming, instead of decoding with what was not trained with."""
    ae_dir = tmp_path / "ae"
    cfg = make_cfg("experiment=autoencoder", "trainer.max_steps=2", f"model.output_dir={ae_dir}")
    train(cfg)
    assert (ae_dir / "config.json").is_file()
    import json

    assert json.loads((ae_dir / "config.json").read_text())["scaling_factor"] > 0
    cfg = make_cfg(
        "conditioner=attr_mask_concat",
        "autoencoder=small_kl",
        f"autoencoder.pretrained={ae_dir}",
        f"paths.output_dir={tmp_path / 'ldm'}",
    )
    train(cfg)
    gen = FaceGenerator.from_checkpoint(last_ckpt(cfg))
    assert gen.model.denoiser.sample_size == 4  # 16 px / 4
    assert gen.sample(attributes={"Smiling": 1}, num_samples=1, num_steps=2).shape == (
        1,
        16,
        16,
        3,
    )
    from safetensors.torch import load_file, save_file

    from facediff.checkpoint import CheckpointError, load

    ckpt = load(last_ckpt(cfg))
    assert not [k for k in ckpt["state_dict"] if k.startswith("autoencoder.")]
    record = ckpt["pretrained_frozen"]["autoencoder.model"]
    assert record["source"] == f"autoencoder.pretrained={ae_dir}"
    weights = {k: v for k, v in gen.model.autoencoder.model.state_dict().items()}
    assert sorted(record["keys"]) == sorted(f"autoencoder.model.{k}" for k in weights)
    assert all(
        torch.equal(v, load_file(ae_dir / "diffusion_pytorch_model.safetensors")[k])
        for k, v in weights.items()
    )  # the folder's weights, restored as they were

    state = load_file(ae_dir / "diffusion_pytorch_model.safetensors")
    name = sorted(state)[0]
    state[name] = state[name] + 1e-3  # the folder now holds other weights
    save_file(state, ae_dir / "diffusion_pytorch_model.safetensors")
    changed = rf"autoencoder\.pretrained={ae_dir} now holds other weights"
    with pytest.raises(CheckpointError, match=rf"last\.ckpt: the checkpoint .*{changed}"):
        FaceGenerator.from_checkpoint(last_ckpt(cfg))
    resume = make_cfg(
        "conditioner=attr_mask_concat",
        "autoencoder=small_kl",
        f"autoencoder.pretrained={ae_dir}",
        f"paths.output_dir={tmp_path / 'ldm'}",
        f"ckpt_path={last_ckpt(cfg)}",
        "trainer.max_steps=4",
    )
    with pytest.raises(CheckpointError, match=rf"ckpt_path=.*last\.ckpt: .*{changed}"):
        train(resume)


def test_patch_size_2_trains_and_samples_through_the_configs(make_cfg):
    cfg = make_cfg("conditioner=attr_mask_concat", "denoiser.patch_size=2")
    train(cfg)
    gen = FaceGenerator.from_checkpoint(last_ckpt(cfg))
    assert gen.model.denoiser.unet.config.sample_size == 8  # 16 px folded 2x2
    assert gen.sample(attributes={"Smiling": 1}, num_samples=1, num_steps=2).shape == (
        1,
        16,
        16,
        3,
    )


def test_control_guidance_scale_works_end_to_end(make_cfg):
    """multi_control: the control vector has its own guidance scale (1 = no extra guidance,
    the same as leaving it out), and the flip flag reaches the samples."""
    cfg = make_cfg("conditioner=multi_control", "sampler.guidance_scale=2.0")
    assert cfg.denoiser.vector_schedule == "cosine"
    train(cfg)
    gen = FaceGenerator.from_checkpoint(last_ckpt(cfg))
    batch = gen.batch({"Smiling": 1}, None, 2, False)
    batch["mask"] = torch.zeros(2, 16, 16, dtype=torch.long)

    def sample(scales, flip=0.0):
        b = dict(batch, control=batch["control"].clone())
        b["control"][:, 0] = flip
        with gen.model.ema_weights():
            return gen.model.generate(b, seed=1, num_steps=3, guidance_scale=scales)

    base = sample({"attrs": 2.0, "mask": 2.0})
    assert torch.equal(sample({"attrs": 2.0, "mask": 2.0, "control": 1.0}), base)
    assert not torch.allclose(sample({"attrs": 2.0, "mask": 2.0, "control": 4.0}), base)
    assert not torch.allclose(sample({"attrs": 2.0, "mask": 2.0}, flip=1.0), base)
    with pytest.raises(ValueError, match=r"guidance_scale\['control'\]"):
        sample({"attrs": 2.0, "control": float("nan")})
    # sampling from values: the training data's median control vector (unflipped; SynthFaces:
    # the full crop box, source size / 1024), the flip set by name, a wrong name refused
    default = gen.model.data_info["control_default"]
    size = cfg.data.source.image_size / 1024
    assert default == [0.0, 0.0, 0.0, 1.0, 1.0, size, size]
    assert gen.batch({"Smiling": 1}, None, 2)["control"].tolist() == [default] * 2
    flipped = gen.batch({"Smiling": 1}, None, 1, control={"flip": 1})["control"][0]
    assert flipped.tolist() == [1.0, *default[1:]]
    with pytest.raises(ValueError, match="control: unknown name 'flop'; expected one of"):
        gen.sample(attributes={"Smiling": 1}, control={"flop": 1})
    assert gen.sample(attributes={"Smiling": 1}, control={"flip": 1}, num_steps=2).shape[0] == 1


@pytest.mark.slow
def test_speed_levers_keep_the_loss_and_the_checkpoint_format(make_cfg):
    """channels_last and a compiled denoiser give the loss eager gives (within float rounding)
    and the same state-dict keys (no `_orig_mod.`): their checkpoints are interchangeable."""
    from facediff.config import instantiate
    from facediff.lit.training import build

    cfg = make_cfg("conditioner=attr_mask_concat")
    dm, _ = build(cfg)
    batch = next(iter(dm.train_dataloader()))
    losses, keys = {}, {}
    for name, options in {
        "eager": {},
        "channels_last": {"channels_last": True},
        "compiled": {"compile_denoiser": True},
    }.items():
        torch.manual_seed(0)
        model = instantiate(cfg.model)
        for k, v in options.items():
            setattr(model, k, v)
        model.apply_speed_options()
        losses[name] = model.diffusion_loss(batch, torch.Generator().manual_seed(1))["loss"]
        keys[name] = set(model.state_dict())
    torch.testing.assert_close(losses["channels_last"], losses["eager"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(losses["compiled"], losses["eager"], rtol=1e-4, atol=1e-5)
    assert keys["compiled"] == keys["eager"] == keys["channels_last"]
    assert not [k for k in keys["compiled"] if "_orig_mod" in k]


def test_one_seed_pairs_two_settings(make_cfg):
    """What facediff-report's pairing by seed rests on: two settings of one architecture (P2
    against the plain loss) with the same seed start from the same weights and see the same
    batches in the same order; another seed changes both."""
    import lightning as L

    from facediff.config import instantiate

    def start(experiment: str, seed: int):
        cfg = make_cfg(f"experiment={experiment}", f"seed={seed}")
        L.seed_everything(cfg.seed)  # as lit.training.fit does before building
        model = instantiate(cfg.model)
        dm = instantiate(cfg.data)
        dm.prepare_data()
        dm.setup("fit")
        batches = [b["image"] for _, b in zip(range(3), dm.train_dataloader())]
        return model.state_dict(), batches

    (w_p2, b_p2), (w_plain, b_plain) = start("multi", 3), start("multi_plain", 3)
    assert w_p2.keys() == w_plain.keys()
    assert all(torch.equal(w_p2[k], w_plain[k]) for k in w_p2)
    assert all(torch.equal(a, b) for a, b in zip(b_p2, b_plain))
    w_other, b_other = start("multi", 4)
    assert not all(torch.equal(w_p2[k], w_other[k]) for k in w_p2)
    assert not all(torch.equal(a, b) for a, b in zip(b_p2, b_other))
