"""LoRA fine-tuning of Stable Diffusion 2 on faces (docs/references.md: LoRA on SD 2): the attributes written as a prompt.

- `PromptEncoder`: attributes -> a prompt ("a photo of a face, smiling, no eyeglasses") -> the
  pipeline's frozen CLIP text encoder -> token embeddings (B, 77, D); its null condition is
  the empty prompt's embedding, as Stable Diffusion's classifier-free guidance uses ("the
  unconditional variant": train with `conditioner.encoders.attrs.dropout=1.0`).
- `StableDiffusionUNet`: the pipeline's `UNet2DConditionModel`, frozen, with peft LoRA adapters
  on the attention projections (to_q, to_k, to_v, to_out.0) of every attention layer; only they
  train. Same `denoiser(zt, t, cond)` interface as facediff's own denoisers.
- `save_lora` / `load_lora`: the adapters alone, in diffusers' LoRA format
  (`pytorch_lora_weights.safetensors`), so a stock `StableDiffusionPipeline.load_lora_weights`
  reads them too.

Every part loads from a local Stable Diffusion 2 folder (`model.pretrained=`): `unet/`, `vae/`,
`text_encoder/`, `tokenizer/`, `scheduler/`; a missing one is an error naming the file it wants.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from facediff.models.conditioning import ConditionEncoder
from facediff.models.denoiser import Condition
from facediff.models.pretrained import from_pretrained

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_FILE = "pytorch_lora_weights.safetensors"


def check_folder(pretrained: str, sub: str, wanted: str, option: str = "model.pretrained"):
    """A local pipeline folder's part, or an error naming the file that is missing."""
    path = Path(pretrained).expanduser()
    if not (path / sub / wanted).is_file():
        raise FileNotFoundError(
            f"{option}={pretrained}: {path / sub / wanted} not found; a Stable Diffusion 2 folder "
            "(save_pretrained layout: unet/, vae/, text_encoder/, tokenizer/, scheduler/) is needed"
        )
    return str(path)


def scheduler_from_pretrained(pretrained: str, subfolder: str = "scheduler"):
    """The pipeline's noise schedule as a DDPMScheduler (betas, prediction type: SD 2 at 768 px
    predicts v, SD 2 base epsilon)."""
    from diffusers import DDPMScheduler

    path = check_folder(pretrained, subfolder, "scheduler_config.json")
    return DDPMScheduler.from_pretrained(path, subfolder=subfolder)


def phrase(name: str, present: bool) -> str:
    """CelebA attribute name -> prompt words: Black_Hair -> "black hair", absent -> "no ..."."""
    words = name.replace("_", " ").lower()
    if present:
        return words
    if words.startswith(("no ", "wearing ")):
        return "not " + words
    return "no " + words


def attribute_prompt(names: list[str], attrs: Tensor, known: Tensor, prefix: str) -> list[str]:
    """One prompt per row: the prefix, then each known attribute present or absent."""
    prompts = []
    for row, k in zip(attrs.tolist(), known.tolist()):
        parts = [phrase(n, v > 0.5) for n, v, kn in zip(names, row, k) if kn]
        prompts.append(", ".join([prefix, *parts]))
    return prompts


class PromptEncoder(ConditionEncoder):
    """Attributes as a prompt through a frozen CLIP text encoder (transformers)."""

    requires = ("attrs", "attrs_known")

    def __init__(
        self,
        pretrained: str,
        attributes: list[str],
        prefix: str = "a photo of a face",
        dropout: float = 0.1,
    ):
        super().__init__(dropout)
        from transformers import CLIPTextModel, CLIPTokenizer

        check_folder(pretrained, "tokenizer", "tokenizer_config.json")
        self.tokenizer = CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer")
        self.text_encoder = from_pretrained(
            CLIPTextModel, pretrained, "model.pretrained", subfolder="text_encoder"
        )
        self.text_encoder.requires_grad_(False).eval()
        self.attributes, self.prefix = list(attributes), prefix
        self.dim = self.text_encoder.config.hidden_size

    def train(self, mode: bool = True):
        super().train(mode)
        self.text_encoder.eval()  # frozen, always
        return self

    @torch.no_grad()
    def embed(self, prompts: list[str]) -> Tensor:
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.text_encoder.device)
        return self.text_encoder(ids)[0]

    def prompts(self, batch) -> list[str]:
        a = batch["attrs"]
        if a.shape[1] != len(self.attributes):
            raise ValueError(
                f"conditioner: the batch has {a.shape[1]} attributes, the prompt encoder was "
                f"given {len(self.attributes)} names (conditioner.encoders.attrs.attributes)"
            )
        return attribute_prompt(self.attributes, a.cpu(), batch["attrs_known"].cpu(), self.prefix)

    def encode(self, batch, spatial_size):
        return self.embed(self.prompts(batch))

    def null(self, batch_size, spatial_size):
        return self.embed([""]).expand(batch_size, -1, -1)


class StableDiffusionUNet(nn.Module):
    """The pipeline's UNet, frozen, with trainable LoRA adapters (peft) on its attention."""

    def __init__(
        self,
        pretrained: str,
        sample_size: int | None = None,
        rank: int = 8,
        alpha: float | None = None,
        dropout: float = 0.0,
        target_modules: list[str] | None = None,
        subfolder: str = "unet",
    ):
        super().__init__()
        from diffusers import UNet2DConditionModel
        from peft import LoraConfig

        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"denoiser.rank={rank!r}: expected an integer >= 1")
        self.unet = from_pretrained(
            UNet2DConditionModel, pretrained, "model.pretrained", subfolder=subfolder
        )
        self.unet.requires_grad_(False)
        self.unet.add_adapter(
            LoraConfig(
                r=rank,
                lora_alpha=alpha or rank,
                lora_dropout=dropout,
                init_lora_weights="gaussian",
                target_modules=list(target_modules or LORA_TARGETS),
            )
        )
        c = self.unet.config
        # the UNet is convolutional: it runs at the data's latent size, whatever it was trained at
        self.sample_size, self.in_channels = sample_size or c.sample_size, c.in_channels
        self.extra_in_channels, self.vector_dim = 0, 0
        self.cross_attention_dim = c.cross_attention_dim
        self.patch_size, self.routing = 1, None

    def forward(self, zt: Tensor, t: Tensor, cond: Condition) -> Tensor:
        return self.unet(zt, t, encoder_hidden_states=cond.tokens).sample

    def lora_state_dict(self) -> dict[str, Tensor]:
        from peft.utils import get_peft_model_state_dict

        return get_peft_model_state_dict(self.unet)


def save_lora(denoiser: StableDiffusionUNet, folder) -> Path:
    """The LoRA adapters alone, in diffusers' format: `folder/pytorch_lora_weights.safetensors`
    (`StableDiffusionPipeline.load_lora_weights(folder)` reads it)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layers = convert_state_dict_to_diffusers(denoiser.lora_state_dict())
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers)
    return folder / LORA_FILE


def load_lora(denoiser: StableDiffusionUNet, folder) -> None:
    """Load adapters written by `save_lora` into a StableDiffusionUNet of the same shape."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(folder) / LORA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (written by facediff.models.sd.save_lora)")
    state = load_file(path)
    prefix = "unet."
    state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    from diffusers.utils import convert_unet_state_dict_to_peft

    result = set_peft_model_state_dict(denoiser.unet, convert_unet_state_dict_to_peft(state))
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{path}: keys that fit no adapter of this UNet: {unexpected[:5]}")
