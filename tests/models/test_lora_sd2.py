"""experiment=lora_sd2 on a tiny Stable-Diffusion-2-shaped pipeline built and saved here: only
the LoRA adapters train, the attributes become a prompt, and the adapters saved alone load into
a stock StableDiffusionPipeline with the same outputs."""

import json
from pathlib import Path

import pytest
import torch

from facediff import checkpoint
from facediff.models.sd import (
    LORA_FILE,
    PromptEncoder,
    StableDiffusionUNet,
    attribute_prompt,
    load_lora,
    save_lora,
)

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789,.'-"


def tiny_sd2(folder: Path) -> Path:
    """A Stable Diffusion 2-shaped pipeline (linear-projection UNet with per-level heads,
    v-prediction scaled-linear schedule, KL VAE, CLIP text encoder and BPE tokenizer), tiny."""
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    tok_dir = folder / "_tok"
    tok_dir.mkdir(parents=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=16
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
            projection_dim=32,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        clip_sample=False,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder / "sd2")
    return folder / "sd2"


@pytest.fixture(scope="module")
def sd2(tmp_path_factory):
    return tiny_sd2(tmp_path_factory.mktemp("pretrained"))


def test_attributes_become_a_prompt():
    names = ["Smiling", "Eyeglasses", "Wearing_Hat", "No_Beard"]
    attrs = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    known = torch.tensor([[True, True, False, True], [False, True, True, True]])
    assert attribute_prompt(names, attrs, known, "a photo of a face") == [
        "a photo of a face, smiling, no eyeglasses, no beard",
        "a photo of a face, eyeglasses, wearing hat, not no beard",
    ]


def test_missing_pretrained_parts_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer/tokenizer_config.json not found"):
        PromptEncoder(str(tmp_path), ["Smiling"])
    with pytest.raises(FileNotFoundError, match=r"unet/config.json not found"):
        StableDiffusionUNet(str(tmp_path))


def test_lora_sd2_trains_only_the_adapters_and_they_load_into_a_stock_pipeline(
    sd2, data_dir, tmp_path
):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from facediff.api import FaceGenerator
    from facediff.cli.train import train
    from facediff.config import compose
    from tests.conftest import TINY

    overrides = [
        "experiment=lora_sd2",
        f"model.pretrained={sd2}",
        "conditioner.dim=32",
        "latent.factor=2",
        "latent.cache=false",
        "data.attributes=[Smiling,Male]",
        "sampler.num_steps=2",
        "model.optimizer.lr=1e-2",
        "model.lr_warmup_steps=0",
        "trainer.max_steps=2",
    ]
    base = [f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path / 'run'}"]
    tiny = [o for o in TINY if not o.startswith("denoiser.")]
    cfg = compose("train", base + tiny + overrides)
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    gen = FaceGenerator.from_checkpoint(ckpt, use_ema=False)
    model = gen.model
    trainable = model.trainable_parameters()
    lora = [p for n, p in model.denoiser.named_parameters() if "lora_" in n]
    assert sum(p.numel() for p in trainable) == sum(p.numel() for p in lora) > 0
    # the checkpoint holds what trained, not the pipeline's frozen UNet, VAE and text encoder
    # (their folder and sha256 instead; checked against the folder when read)
    saved = checkpoint.load(ckpt)
    assert set(saved["pretrained_frozen"]) == {
        "autoencoder.model",
        "conditioner.encoders.attrs.text_encoder",
        "denoiser.unet",
    }
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert not frozen & set(saved["state_dict"])
    assert any("lora_B" in k for k in saved["state_dict"])
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert ckpt.stat().st_size < model_bytes / 2
    assert model.noise_scheduler.config.prediction_type == "v_prediction"  # the pipeline's

    base_unet = UNet2DConditionModel.from_pretrained(sd2, subfolder="unet")
    frozen = {n.replace(".base_layer", ""): p for n, p in model.denoiser.unet.named_parameters()}
    for name, p in base_unet.named_parameters():  # the pretrained weights did not move
        assert torch.equal(frozen[name], p), name
    assert any(p.abs().sum() > 0 for n, p in model.denoiser.named_parameters() if "lora_B" in n)

    images = gen.sample(attributes={"Smiling": 1}, num_samples=2, seed=0)
    assert images.shape == (2, 16, 16, 3)

    from facediff.export import export

    exported = export(ckpt, tmp_path / "exported", use_ema=False)  # facediff-export: the adapters
    assert sorted(f.name for f in exported.iterdir()) == ["README.md", LORA_FILE]
    assert "a photo of a face, smiling, male" in (exported / "README.md").read_text()
    path = save_lora(model.denoiser, tmp_path / "lora")
    assert path.name == LORA_FILE and path.stat().st_size < 1_000_000
    z, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    text = torch.randn(2, 16, 32)
    with torch.no_grad():
        want = model.denoiser.unet(z, t, encoder_hidden_states=text).sample
        plain = base_unet(z, t, encoder_hidden_states=text).sample
        pipe = StableDiffusionPipeline.from_pretrained(sd2, safety_checker=None)
        pipe.load_lora_weights(tmp_path / "lora")
        got = pipe.unet(z, t, encoder_hidden_states=text).sample
        fresh = StableDiffusionUNet(str(sd2))
        load_lora(fresh, tmp_path / "lora")
        again = fresh.unet(z, t, encoder_hidden_states=text).sample
    assert not torch.allclose(want, plain, atol=1e-5)  # the adapters change the UNet
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)  # a stock pipeline reads them
    torch.testing.assert_close(again, want, atol=1e-6, rtol=1e-5)
