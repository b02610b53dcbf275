import json

import numpy as np
import pytest
import torch

from facediff.data.celebamask import CelebAMaskHQ
from facediff.data.datamodule import EpochSampler, FaceDataModule
from facediff.data.prepared import BadInputError, PreparedDataset, prepare
from facediff.data.transforms import hflip
from tests.data.fixtures import write_celebamask


@pytest.fixture
def prepared(tmp_path):
    write_celebamask(tmp_path / "raw", n=6)
    src = CelebAMaskHQ(str(tmp_path / "raw"), split="random", train_size=4, val_size=2)
    prepare(src, tmp_path / "prep", 16, progress=False)
    return tmp_path / "prep"


def test_batch_dict(prepared):
    dm = FaceDataModule(str(prepared), 16, batch_size=2, flip_p=0.0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert -1 <= batch["image"].min() and batch["image"].max() <= 1
    assert batch["mask"].dtype == torch.int64 and batch["mask"].shape == (2, 16, 16)
    assert batch["attrs"].shape == (2, 40) and batch["attrs_known"].dtype == torch.bool
    assert batch["control"].shape == (2, 7) and (batch["control"][:, 0] == 0).all()


def test_flip_twice_is_identity_and_swaps_classes_once():
    image = torch.randn(3, 8, 8)
    mask = torch.randint(0, 19, (8, 8))
    i1, m1 = hflip(image, mask)
    i2, m2 = hflip(i1, m1)
    assert torch.equal(i2, image) and torch.equal(m2, mask)
    mask = torch.full((8, 8), 4)
    mask[:, 4:] = 5  # l_eye left, r_eye right
    _, flipped = hflip(image, mask)
    assert (flipped[:, :4] == 4).all() and (flipped[:, 4:] == 5).all()  # mirrored and swapped
    mask[:, :] = 6
    assert (hflip(image, mask)[1] == 7).all()


def test_flip_recorded_in_control(prepared):
    dm = FaceDataModule(str(prepared), 16, flip_p=1.0)
    dm.setup()
    ds = dm.dataset("train")
    plain, flipped = ds[0], ds[(0, True)]
    assert flipped["control"][0] == 1 and plain["control"][0] == 0
    assert torch.equal(flipped["image"], plain["image"].flip(-1))


def test_sampler_is_seeded_sharded_and_resumable():
    s = EpochSampler(10, shuffle=True, flip_p=0.5, seed=3)
    s.set_epoch(2)
    full = list(s)
    s.load_state_dict({"epoch": 2, "start": 4})
    assert list(s) == full[4:]
    s.set_epoch(3)
    assert list(s) != full


def test_hash_and_version_checks(prepared):
    meta = json.loads((prepared / "meta.json").read_text())
    arr = np.load(prepared / "attrs.npy")
    arr[0, 0] = 1 - arr[0, 0]
    np.save(prepared / "attrs.npy", arr)
    with pytest.raises(BadInputError, match="content hash"):
        PreparedDataset(prepared, verify=True)
    meta["format_version"] = 99
    (prepared / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BadInputError, match="format_version 99"):
        PreparedDataset(prepared)


def test_resolution_mismatch_and_missing_folder(prepared, tmp_path):
    with pytest.raises(BadInputError, match="prepared at 16 px but data.resolution=32"):
        FaceDataModule(str(prepared), 32).setup()
    with pytest.raises(BadInputError, match="no data.source"):
        FaceDataModule(str(tmp_path / "nothing"), 16).prepare_data()


def test_a_folder_prepared_under_a_moved_source_name_is_reused(tmp_path):
    """SynthFaces moved from facediff.data.celebamask to facediff.data.synthfaces: a folder
    whose meta.json names the old class is the same data and is reused, not refused; another
    source name still is."""
    import json
    from functools import partial

    from facediff.data.synthfaces import SynthFaces

    source = partial(SynthFaces, num_faces=12, image_size=32, mask_size=32, num_workers=1)

    def dm():
        return FaceDataModule(str(tmp_path / "p"), 16, source=source, raw_dir=str(tmp_path / "r"))

    dm().prepare_data()
    meta_path = tmp_path / "p" / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["origin"]["source"] == "facediff.data.synthfaces.SynthFaces"
    meta["origin"]["source"] = "facediff.data.celebamask.SynthFaces"
    meta_path.write_text(json.dumps(meta))
    dm().prepare_data()  # reused, no error
    meta["origin"]["source"] = "facediff.data.celebamask.CelebAMaskHQ"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="prepared from 'facediff.data.celebamask.CelebAMaskHQ'"):
        dm().prepare_data()
