"""Loading pretrained parts (`from_pretrained`) from local folders, with errors that name the
option and the files it needs, tagged so that checkpoints can leave them out."""

from __future__ import annotations

from pathlib import Path

from facediff.checkpoint import PRETRAINED, state_digest


def from_pretrained(cls, name_or_path: str, option: str, hint: str = "", **kwargs):
    """`cls.from_pretrained` that fails with a clear message when the weights are absent.

    A local folder must hold `config.json` and the weights; a hub name needs network access,
    which facediff's machines do not have, so the error names the files to put in place.
    The model comes back tagged (`model.facediff_pretrained`: where it came from and the sha256
    of its weights as loaded), so that a checkpoint can leave out what it did not train and
    check, when read, that the same weights are in place (`facediff.checkpoint.leave_out_frozen`).
    """
    model = _from_pretrained(cls, name_or_path, option, hint, **kwargs)
    source = f"{option}={name_or_path}"
    if kwargs.get("subfolder"):
        source += f" (subfolder {kwargs['subfolder']})"
    setattr(model, PRETRAINED, {"source": source, "sha256": state_digest(model)})
    return model


def _from_pretrained(cls, name_or_path: str, option: str, hint: str = "", **kwargs):
    path = Path(name_or_path).expanduser()
    wanted = "config.json and diffusion_pytorch_model.safetensors (or model.safetensors)"
    looks_local = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") != 1
    if looks_local and not path.exists():
        raise FileNotFoundError(
            f"{option}={name_or_path}: folder not found; it must hold {wanted}"
            + (f" ({hint})" if hint else "")
        )
    if path.exists():
        sub = path / kwargs.get("subfolder", "") if kwargs.get("subfolder") else path
        if not (sub / "config.json").is_file():
            raise FileNotFoundError(
                f"{option}={name_or_path}: {sub / 'config.json'} not found; "
                f"the folder must hold {wanted}"
            )
        return cls.from_pretrained(str(path), **kwargs)
    try:
        return cls.from_pretrained(name_or_path, **kwargs)
    except Exception as e:  # hub unreachable, unknown repo, ...
        raise FileNotFoundError(
            f"{option}={name_or_path}: not a local folder and could not be loaded from the hub "
            f"({type(e).__name__}). Download it where there is network access and point "
            f"{option} at the folder, which must hold {wanted}."
        ) from e


__all__ = ["from_pretrained"]
