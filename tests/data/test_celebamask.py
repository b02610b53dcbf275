import numpy as np
import pytest
from PIL import Image

from facediff.data.celebamask import CelebAMaskHQ, merge_part_masks, part_path, read_attributes
from facediff.data.prepared import BadInputError, PreparedDataset, prepare
from tests.data.fixtures import write_celebamask


@pytest.fixture
def raw(tmp_path):
    expected, values = write_celebamask(tmp_path / "raw")
    return tmp_path / "raw", expected, values


def test_merge_gives_exact_label_maps(raw):
    root, expected, _ = raw
    for i, want in enumerate(expected):
        got = merge_part_masks(root, i)
        assert got.dtype == np.uint8 and got.shape == (16, 16)
        np.testing.assert_array_equal(got, want)
    # hair (13) is painted over the skin (1) where they overlap; nose (2) over skin
    assert expected[0][3, 5] == 13 and expected[0][8, 7] == 2


def test_read_attributes(raw):
    root, _, values = raw
    names, got = read_attributes(root)
    assert len(names) == 40 and got.dtype == np.int8 and got.shape == (3, 40)
    np.testing.assert_array_equal(got, values)


def test_official_split_boundaries(raw):
    src = CelebAMaskHQ(str(raw[0]), split="official")
    s = src.splits()
    assert s["train"].tolist() == [0] and s["val"].tolist() == [1] and s["test"].tolist() == [2]


def test_prepare_round_trip_with_upsampled_masks(raw, tmp_path):
    root, expected, values = raw
    src = CelebAMaskHQ(str(root), attributes=["Smiling", "Male"])
    prepare(src, tmp_path / "prep", resolution=32, progress=False)
    data = PreparedDataset(tmp_path / "prep", verify=True)
    a = data.arrays
    assert a["images"].shape == (3, 32, 32, 3) and a["masks"].shape == (3, 32, 32)
    # masks at half resolution are upsampled with nearest neighbour: each label doubles
    np.testing.assert_array_equal(a["masks"][1], expected[1].repeat(2, 0).repeat(2, 1))
    cols = [31, 20]  # Smiling, Male in CelebA order
    np.testing.assert_array_equal(a["attrs"], values[:, cols])
    assert a["known"].all() and data.attr_names == ["Smiling", "Male"]


def test_missing_part_is_normal_but_missing_image_is_an_error(raw, tmp_path):
    root, _, _ = raw
    assert not part_path(root, 1, "l_eye").exists()
    (root / "CelebA-HQ-img" / "2.jpg").unlink()
    with pytest.raises(BadInputError, match="2.jpg: image not found"):
        prepare(CelebAMaskHQ(str(root)), tmp_path / "p", 16, progress=False)
    report = prepare(CelebAMaskHQ(str(root)), tmp_path / "p", 16, skip_bad=True, progress=False)
    assert report["skipped"] == 1 and report["kept"] == 2
    assert "2.jpg" in report["skipped_items"][0]["error"]
    data = PreparedDataset(tmp_path / "p")
    assert len(data) == 2 and sum(len(data.split(s)) for s in ("train", "val", "test")) == 2


def test_unreadable_png_names_the_file(raw):
    root, _, _ = raw
    part_path(root, 0, "nose").write_bytes(b"not a png")
    with pytest.raises(BadInputError, match="00000_nose.png: unreadable"):
        merge_part_masks(root, 0)


def test_mask_of_wrong_size_names_the_file(raw):
    root, _, _ = raw
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(part_path(root, 0, "nose"))
    with pytest.raises(BadInputError, match="00000_nose.png: mask is 8x8, expected 16x16"):
        merge_part_masks(root, 0)


def test_attribute_row_with_wrong_count_names_the_line(raw):
    root, _, _ = raw
    path = root / "CelebAMask-HQ-attribute-anno.txt"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].rsplit(" ", 1)[0]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadInputError, match=r"attribute-anno.txt:4: expected a file name and 40"):
        read_attributes(root)


def test_unknown_attribute_name_lists_valid_ones(raw):
    with pytest.raises(ValueError, match="data.attributes.*'Smilling'.*Smiling"):
        CelebAMaskHQ(str(raw[0]), attributes=["Smilling"])
