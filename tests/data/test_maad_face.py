import numpy as np
import pytest

from facediff.data.datamodule import FaceDataModule
from facediff.data.maad_face import MaadFace, balanced_manifest, read_maad_csv
from facediff.data.prepared import BadInputError, PreparedDataset, prepare
from tests.data.fixtures import write_maad


def test_read_csv_keeps_unknown(tmp_path):
    csv, _, values, names = write_maad(tmp_path)
    files, attrs, got = read_maad_csv(csv)
    assert files == names and len(attrs) == 47 and got.dtype == np.int8
    np.testing.assert_array_equal(got, values)
    assert (got == 0).any()


def test_value_outside_ternary_names_the_line(tmp_path):
    csv, _, _, _ = write_maad(tmp_path)
    lines = csv.read_text().splitlines()
    lines[2] = lines[2][: lines[2].rindex(",")] + ",2"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadInputError, match=r"MAAD_Face.csv:3: .*-1, 0 or 1, got 2"):
        read_maad_csv(csv)


@pytest.mark.parametrize("as_zip", [False, True])
def test_prepare_from_folder_or_zip_unknown_stays_distinct(tmp_path, as_zip):
    csv, images, values, _ = write_maad(tmp_path, as_zip=as_zip)
    src = MaadFace(str(images), str(csv), attributes=["Male", "Smiling"], val_size=2)
    prepare(src, tmp_path / "prep", 16, progress=False)
    data = PreparedDataset(tmp_path / "prep")
    a = data.arrays
    cols = [0, 35]
    assert not data.has_masks and "masks" not in a
    np.testing.assert_array_equal(a["attrs"], values[:, cols] == 1)
    np.testing.assert_array_equal(a["known"], values[:, cols] != 0)
    assert a["images"].shape == (12, 16, 16, 3)
    assert a["source_hw"][0].tolist() == [40, 30]  # centre-cropped from 30x40
    manifest = data.meta["report"]["source_report"]  # the manifest's report travels in meta.json
    assert manifest["rows_in_csv"] == 12 and set(manifest["attributes_in_manifest"]) == {
        "Male",
        "Smiling",
    }


def test_mask_conditioned_model_on_maad_gets_clear_error(tmp_path):
    csv, images, _, _ = write_maad(tmp_path)
    prepare(MaadFace(str(images), str(csv), val_size=2), tmp_path / "prep", 16, progress=False)
    dm = FaceDataModule(str(tmp_path / "prep"), 16, require_masks=True)
    with pytest.raises(BadInputError, match="maad_face data set has no masks"):
        dm.setup()


def test_balanced_manifest_balances_known_values():
    rng = np.random.default_rng(0)
    values = np.where(rng.random((2000, 2)) < 0.9, -1, 1).astype(np.int8)  # 10 % positives
    values[:100, 1] = 0  # unknowns are never counted as negatives
    rows = balanced_manifest(values, 200, seed=0)
    assert len(rows) == len(set(rows.tolist())) == 200
    chosen = values[rows]
    for k in range(2):
        pos, neg = (chosen[:, k] == 1).sum(), (chosen[:, k] == -1).sum()
        assert abs(pos - neg) <= 0.35 * (pos + neg), (pos, neg)
