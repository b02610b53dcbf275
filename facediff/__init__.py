"""facediff: controllable face generation with conditional diffusion models."""

__version__ = "0.1.0"


def load_model(checkpoint, **kwargs):
    """Load a trained model for sampling in a notebook; see `facediff.api.FaceGenerator`."""
    from facediff.api import FaceGenerator

    return FaceGenerator.from_checkpoint(checkpoint, **kwargs)


__all__ = ["__version__", "load_model"]
