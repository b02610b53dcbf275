"""AutoencoderTraining: the small KL autoencoder facediff trains itself (no hub access needed).

It trains a diffusers AutoencoderKL (L1 reconstruction + a small KL term), measures the scaling
factor that brings its latents to unit variance on the training data, and writes a
`save_pretrained` folder that `facediff.models.autoencoders.DiffusersAutoencoder` loads.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

log = logging.getLogger(__name__)


class AutoencoderTraining(L.LightningModule):
    """Args:
    output_dir: where the trained `save_pretrained` folder goes (written at the end of fit).
    block_out_channels: widths; the downsampling factor is 2^(len - 1).
    kl_weight: weight of the KL term (small: the latent stays close to an autoencoder's).
    """

    def __init__(
        self,
        output_dir: str,
        block_out_channels: tuple[int, ...] = (32, 64, 64),
        latent_channels: int = 4,
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
        kl_weight: float = 1e-6,
        lr: float = 1e-3,
        scale_batches: int = 8,
    ):
        super().__init__()
        n = len(block_out_channels)
        self.vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=tuple(block_out_channels),
            latent_channels=latent_channels,
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
        )
        self.output_dir, self.kl_weight, self.lr = Path(output_dir), kl_weight, lr
        self.scale_batches = scale_batches
        self.requires: set[str] = set()
        self.build_config = self.data_info = None

    def forward(self, x):
        return self.vae(x).sample

    def training_step(self, batch, batch_idx):
        x = batch["image"]
        posterior = self.vae.encode(x).latent_dist
        rec = self.vae.decode(posterior.sample()).sample
        l1, kl = F.l1_loss(rec, x), posterior.kl().mean()
        loss = l1 + self.kl_weight * kl
        self.log_dict({"train/loss": loss, "train/l1": l1, "train/kl": kl}, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x = batch["image"]
        rec = self.vae.decode(self.vae.encode(x).latent_dist.mode()).sample
        self.log("val/loss", F.l1_loss(rec, x), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.vae.parameters(), lr=self.lr)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.vae.parameters())

    @torch.no_grad()
    def on_train_end(self) -> None:
        if not self.trainer.is_global_zero or self.trainer.fast_dev_run:
            return
        latents = []
        for i, batch in enumerate(self.trainer.datamodule.train_dataloader()):
            if i == self.scale_batches:
                break
            latents.append(self.vae.encode(batch["image"].to(self.device)).latent_dist.mode())
        scale = float(1.0 / torch.cat(latents).float().std())
        self.vae.register_to_config(scaling_factor=scale)
        tmp = self.output_dir.with_name(self.output_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.vae.save_pretrained(tmp)
        shutil.rmtree(self.output_dir, ignore_errors=True)
        tmp.rename(self.output_dir)
        log.info("autoencoder written to %s (scaling factor %.4f)", self.output_dir, scale)
