"""A table of bad inputs through prepare, train and sample: each error names its culprit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facediff.api import FaceGenerator, load_checkpoint
from facediff.cli.train import train
from facediff.data.celebamask import CelebAMaskHQ, part_path
from facediff.data.maad_face import MaadFace
from facediff.data.prepared import PreparedDataset, prepare
from tests.data.fixtures import write_celebamask, write_maad


# ------------------------------------------------------------------------ prepare: raw data
def celeb(tmp: Path, damage) -> None:
    write_celebamask(tmp / "raw", n=3)
    damage(tmp / "raw")
    prepare(CelebAMaskHQ(str(tmp / "raw")), tmp / "prep", 16, progress=False)


def lines_edit(path: Path, fn) -> None:
    lines = path.read_text().splitlines()
    fn(lines)
    path.write_text("\n".join(lines) + "\n")


ATTR = "CelebAMask-HQ-attribute-anno.txt"
RAW_CASES = {
    "missing image": (lambda r: (r / "CelebA-HQ-img/1.jpg").unlink(), r"1\.jpg: image not found"),
    "truncated jpeg": (
        lambda r: (r / "CelebA-HQ-img/0.jpg").write_bytes(
            (r / "CelebA-HQ-img/0.jpg").read_bytes()[:200]
        ),
        r"0\.jpg: unreadable image",
    ),
    "unreadable png": (
        lambda r: part_path(r, 0, "skin").write_bytes(b"\x89PNG garbage"),
        r"00000_skin\.png: unreadable part mask",
    ),
    "png of wrong size": (
        lambda r: Image.fromarray(np.zeros((9, 9), np.uint8)).save(part_path(r, 2, "nose")),
        r"00002_nose\.png: mask is 9x9, expected 16x16",
    ),
    "png of wrong mode": (
        lambda r: Image.fromarray(np.zeros((16, 16), np.uint16)).save(part_path(r, 1, "hair")),
        r"00001_hair\.png: unsupported PNG mode 'I;16'",
    ),
    "attribute row with wrong count": (
        lambda r: lines_edit(r / ATTR, lambda ls: ls.__setitem__(3, ls[3] + " 1")),
        rf"{ATTR}:4: expected a file name and 40 values, got 41",
    ),
    "attribute value not 1/-1": (
        lambda r: lines_edit(
            r / ATTR, lambda ls: ls.__setitem__(2, ls[2].rsplit(" ", 1)[0] + " 0")
        ),
        rf"{ATTR}:3: values must be 1 or -1, got 0",
    ),
    "attribute count line wrong": (
        lambda r: lines_edit(r / ATTR, lambda ls: ls.__setitem__(0, "5")),
        rf"{ATTR}: line 1 announces 5 images but 3 rows follow",
    ),
    "attribute file missing": (
        lambda r: (r / ATTR).unlink(),
        rf"{ATTR}: attribute file not found",
    ),
    "mapping file missing": (
        lambda r: (r / "CelebA-HQ-to-CelebA-mapping.txt").unlink(),
        r"CelebA-HQ-to-CelebA-mapping\.txt: mapping file not found",
    ),
}


@pytest.mark.parametrize("case", list(RAW_CASES))
def test_bad_raw_celebamask(tmp_path, case):
    damage, message = RAW_CASES[case]
    with pytest.raises(ValueError, match=message):
        celeb(tmp_path, damage)


MAAD_CASES = {
    "maad value outside ternary": (
        lambda csv: lines_edit(csv, lambda ls: ls.__setitem__(4, ls[4].rsplit(",", 1)[0] + ",7")),
        r"MAAD_Face\.csv:5: attribute values must be -1, 0 or 1, got 7",
    ),
    "maad header": (
        lambda csv: lines_edit(csv, lambda ls: ls.__setitem__(0, "File,Id,A")),
        r"MAAD_Face\.csv:1: expected a header starting 'Filename,Identity,'",
    ),
    "maad row with wrong width": (
        lambda csv: lines_edit(csv, lambda ls: ls.__setitem__(2, ls[2] + ",1")),
        r"MAAD_Face\.csv:3: expected 49 fields like the header, got 50",
    ),
    "maad missing image": (
        lambda csv: next((csv.parent / "vggface2/train").rglob("*.jpg")).unlink(),
        r"image not found",
    ),
    "maad unknown attribute": (
        None,
        r"data\.attributes: unknown attribute name\(s\) \['Smiling_'\]",
    ),
}


@pytest.mark.parametrize("case", list(MAAD_CASES))
def test_bad_maad(tmp_path, case):
    damage, message = MAAD_CASES[case]
    csv, images, _, _ = write_maad(tmp_path)
    attrs = ["Smiling_"] if damage is None else None
    if damage is not None:
        damage(csv)
    with pytest.raises(ValueError, match=message):
        prepare(
            MaadFace(str(images), str(csv), attributes=attrs, val_size=2),
            tmp_path / "p",
            16,
            progress=False,
        )


# ----------------------------------------------------------------------- prepared folders
@pytest.fixture
def prepared(tmp_path):
    write_celebamask(tmp_path / "raw", n=3)
    prepare(CelebAMaskHQ(str(tmp_path / "raw")), tmp_path / "prep", 16, progress=False)
    return tmp_path / "prep"


def set_version(p):
    meta = json.loads((p / "meta.json").read_text())
    meta["format_version"] = 0
    (p / "meta.json").write_text(json.dumps(meta))


def change_array(p):
    a = np.load(p / "images.npy")
    a[0, 0, 0, 0] ^= 1
    np.save(p / "images.npy", a)


PREPARED_CASES = {
    "prepared by another version": (set_version, r"meta\.json: format_version 0"),
    "prepared hash mismatch": (change_array, r"content hash .* does not match"),
    "prepared array missing": (lambda p: (p / "known.npy").unlink(), r"known\.npy: missing"),
    "not a prepared folder": (lambda p: (p / "meta.json").unlink(), r"meta\.json missing"),
}


@pytest.mark.parametrize("case", list(PREPARED_CASES))
def test_bad_prepared_folder(prepared, case):
    damage, message = PREPARED_CASES[case]
    damage(prepared)
    with pytest.raises(ValueError, match=message):
        PreparedDataset(prepared, verify=True)


# --------------------------------------------------------------------------- train configs
TRAIN_CASES = {
    "unknown option": (
        ["+denoiser.widths=[8]"],
        r"unknown option denoiser\.widths; .*block_out_channels",
    ),
    "wrong type": (
        ["data.batch_size=many"],
        r"option data\.batch_size='many' \(str\): expected int",
    ),
    "attribute the data set lacks": (
        ["data.attributes=[Smiling,Wings]"],
        r"data\.attributes .*'Wings'.*Smiling",
    ),
    "attribute count mismatch": (["data.num_attributes=3"], r"data\.num_attributes=3 but"),
    "latent shape mismatch": (
        ["denoiser.sample_size=8"],
        r"denoiser\.sample_size=8 does not match",
    ),
    "spatial channels mismatch": (
        ["conditioner=attr_mask_concat", "denoiser.extra_in_channels=0"],
        r"denoiser\.extra_in_channels=0 does not match",
    ),
    "cross-attention width": (
        ["conditioner.dim=64"],
        r"denoiser\.cross_attention_dim=32 does not match conditioner\.dim",
    ),
    "guidance for an untrained condition": (
        ["conditioner=attr", "+sampler.guidance_scale.mask=2"],
        r"sampler\.guidance_scale: .*\['mask'\].*\['attrs'\]",
    ),
    "missing checkpoint to resume": (
        ["ckpt_path=/nowhere/last.ckpt"],
        r"ckpt_path=/nowhere/last\.ckpt",
    ),
    "autoencoder weights absent": (
        ["autoencoder=small_kl"],
        r"autoencoder\.pretrained=.*config\.json",
    ),
    "loss region class": (
        ["loss.region_classes=[eyes]"],
        r"loss\.region_classes: unknown \['eyes'\]",
    ),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_bad_train_config(make_cfg, case):
    overrides, message = TRAIN_CASES[case]
    if case == "guidance for an untrained condition":
        overrides = ["conditioner=attr", "sampler.guidance_scale={mask: 2.0}"]
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        train(make_cfg(*overrides, "trainer.fast_dev_run=true"))


def test_mask_model_on_maad_face(make_cfg, tmp_path):
    csv, images, _, _ = write_maad(tmp_path / "maad", n=12)
    prepare(
        MaadFace(str(images), str(csv), val_size=2), tmp_path / "maad_prep", 16, progress=False
    )
    cfg = make_cfg(
        "conditioner=multi",
        f"data.root={tmp_path / 'maad_prep'}",
        "data.attributes=null",
        "data.num_attributes=47",
        "trainer.fast_dev_run=true",
    )
    with pytest.raises(ValueError, match="maad_face data set has no masks"):
        train(cfg)


# --------------------------------------------------------------------------------- sampling
@pytest.fixture(scope="module")
def generator(tmp_path_factory, data_dir):
    from facediff.config import compose
    from tests.conftest import TINY

    out = tmp_path_factory.mktemp("run")
    cfg = compose(
        "train",
        [
            f"paths.data_dir={data_dir}",
            f"paths.output_dir={out}",
            *TINY,
            "conditioner=attr_mask_concat",
            "callbacks.sample_grid.every_n_steps=0",
        ],
    )
    train(cfg)
    return FaceGenerator.from_checkpoint(out / "checkpoints" / "last.ckpt")


SAMPLE_CASES = {
    "unknown attribute": (dict(attributes={"Wings": 1}), r"attributes: unknown name 'Wings'"),
    "mask labels out of range": (
        dict(mask=np.full((16, 16), 30)),
        r"mask: expected a \(H, W\) label map of 0\.\.18",
    ),
    "mask of wrong rank": (
        dict(mask=np.zeros((2, 16, 16))),
        r"mask: expected a \(H, W\) label map",
    ),
    "guidance for an unknown condition": (
        dict(guidance_scale={"text": 2.0}),
        r"\['text'\] the model was not trained with",
    ),
}


@pytest.mark.parametrize("case", list(SAMPLE_CASES))
def test_bad_sample_request(generator, case):
    kwargs, message = SAMPLE_CASES[case]
    with pytest.raises(ValueError, match=message):
        generator.sample(num_steps=2, **kwargs)


def test_bad_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*nothing\.ckpt not found"):
        load_checkpoint(tmp_path / "nothing.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"other\.ckpt: not a facediff-train checkpoint"):
        load_checkpoint(tmp_path / "other.ckpt")
