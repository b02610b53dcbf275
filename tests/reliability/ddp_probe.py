"""A callback the DDP tests add through the config (+callbacks.probe=...): each rank writes the
items it trained on and a digest of its weights and EMA weights at the end of fit."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class DDPProbe(L.Callback):
    def __init__(self, out_dir: str):
        self.out_dir, self.items = Path(out_dir), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.items.append([trainer.global_step, batch["index"].tolist()])

    def on_train_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        params = pl_module.trainable_parameters()
        record = {
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "items": self.items,
            "weights": digest(params),
            "ema": digest(pl_module.ema.shadow_params),
            "ema_steps": pl_module.ema.optimization_step,
            "bad_steps": [pl_module.bad_steps, pl_module.total_bad_steps],
            "precision": str(trainer.precision),
        }
        path = self.out_dir / f"rank{trainer.global_rank}_step{trainer.global_step}.json"
        path.write_text(json.dumps(record))
