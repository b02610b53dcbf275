import pytest
import torch

from facediff.evaluation.metrics import attribute_scores, feature_distances, mask_scores
from facediff.lit.evaluators import AttributeClassifier


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
    torch.manual_seed(0)
    clf = AttributeClassifier(3, widths=(8, 8, 8, 8), depths=(1, 1, 1, 1)).eval()
    real = torch.rand(40, 3, 16, 16) * 1.6 - 0.8
    same = feature_distances(real, real, clf, kid_subset_size=20)
    assert abs(same["fid"]) < 1e-3
    small = feature_distances(real, (real + 0.1).clamp(-1, 1), clf, kid_subset_size=20)["fid"]
    large = feature_distances(real, (real + 0.5).clamp(-1, 1), clf, kid_subset_size=20)["fid"]
    assert 0 < small < large
