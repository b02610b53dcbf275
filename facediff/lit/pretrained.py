"""Pretrained weights in checkpoints: named and hashed, not copied.

What was loaded with `from_pretrained` and did not train (a first stage, SD 2's UNet under
LoRA, its VAE and text encoder: ~5 GB, against a few MB of LoRA) is left out of every
checkpoint, which records where it came from and its sha256 instead; reading the checkpoint
puts those weights back from the model's own parts after checking they are the same ones.
"""

from __future__ import annotations

from torch import nn

from facediff.checkpoint import CheckpointError
from facediff.models.autoencoders import PRETRAINED


def pretrained_parts(model: nn.Module) -> dict[str, nn.Module]:
    """The parts loaded with from_pretrained (a first stage, a text encoder, SD's UNet), by
    their state-dict prefix."""
    return {n: m for n, m in model.named_modules() if getattr(m, PRETRAINED, None)}


def frozen_keys(prefix: str, part: nn.Module, state: dict) -> list[str]:
    """The part's state-dict entries that training does not change: its frozen parameters
    (and its buffers, where nothing in it trains and it is not in training mode)."""
    trainable = {f"{prefix}.{n}" for n, p in part.named_parameters() if p.requires_grad}
    params = {f"{prefix}.{n}" for n, _ in part.named_parameters()}
    keep_buffers = bool(trainable) or part.training
    return [
        k
        for k in state
        if k.startswith(prefix + ".") and k not in trainable and (k in params or not keep_buffers)
    ]


def leave_out_frozen(model: nn.Module, checkpoint: dict) -> None:
    """Drop the frozen pretrained entries from the checkpoint's state dict, recording each
    part's source, sha256 and keys as `pretrained_frozen`."""
    state, frozen = checkpoint.get("state_dict", {}), {}
    for prefix, part in pretrained_parts(model).items():
        keys = frozen_keys(prefix, part, state)
        for k in keys:
            del state[k]
        frozen[prefix] = {**getattr(part, PRETRAINED), "keys": keys}
    checkpoint["pretrained_frozen"] = frozen


def restore_frozen(model: nn.Module, checkpoint: dict) -> None:
    """Put the frozen pretrained weights the checkpoint left out back into its state dict,
    from the model's own parts, after checking they are the ones it was trained on (the same
    sha256); a CheckpointError naming the option to point elsewhere if not. A checkpoint that
    left nothing out (an evaluator's, an older one) is unchanged."""
    state, parts = checkpoint.get("state_dict", {}), pretrained_parts(model)
    for prefix, record in (checkpoint.get("pretrained_frozen") or {}).items():
        part = parts.get(prefix)
        if part is None:
            raise CheckpointError(
                f"the checkpoint's {prefix} was loaded from {record['source']}, but this "
                "model has no pretrained part there (a checkpoint of another model?)"
            )
        now = getattr(part, PRETRAINED)
        if now["sha256"] != record["sha256"]:
            raise CheckpointError(
                f"the checkpoint was trained on {record['source']} (sha256 "
                f"{record['sha256'][:12]}...), but {now['source']} now holds other weights "
                f"(sha256 {now['sha256'][:12]}...): the checkpoint does not hold them (it "
                "saves only what trained), so point the option at the weights it was "
                "trained with"
            )
        own = part.state_dict(prefix=prefix + ".")
        missing = [k for k in record["keys"] if k not in own]
        if missing:
            raise CheckpointError(
                f"the checkpoint's {prefix} ({record['source']}) has entries this model "
                f"lacks: {missing[:3]}; built with another facediff or peft version?"
            )
        state.update({k: own[k] for k in record["keys"]})


__all__ = ["frozen_keys", "leave_out_frozen", "pretrained_parts", "restore_frozen"]
