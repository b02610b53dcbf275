"""The second domain: DeepFashion-MultiModal's official layout through facediff-prepare (24
classes in the official order, one binary attribute per categorical value, NA unknown, items
without a mask or labels counted), bad input named, the vocabulary carried to the model, and
the person demo's recipe trained on SynthPeople."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facediff.data.deepfashion import (
    DEEPFASHION_ATTRIBUTES,
    DEEPFASHION_CLASSES,
    SHAPE_FILE,
    DeepFashionMM,
    one_hot_labels,
    pad_to_square,
)
from facediff.data.prepared import BadInputError
from facediff.data.synthpeople import write_synthpeople


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """60 SynthPeople in the official layout (a few without a parsing mask or shape labels)."""
    return write_synthpeople(tmp_path_factory.mktemp("df") / "raw", 60)


def test_prepare_through_the_cli_gives_the_official_vocabulary(raw, tmp_path):
    root = tmp_path / "prepared"
    cmd = [sys.executable, "-m", "facediff.cli.prepare", "data=deepfashion_mm"]
    cmd += [f"data.raw_dir={raw}", "data.resolution=32", f"data.root={root}"]
    cmd += ["data.prepare_workers=0", f"hydra.run.dir={tmp_path / 'run'}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    meta = json.loads((root / "meta.json").read_text())
    assert meta["mask_classes"] == list(DEEPFASHION_CLASSES) and len(meta["mask_classes"]) == 24
    assert meta["mask_classes"][:3] == ["background", "top", "outer"]
    assert (
        meta["attr_names"] == list(DEEPFASHION_ATTRIBUTES) and "sleeve=long" in meta["attr_names"]
    )
    assert meta["flip_pairs"] == []
    report = meta["report"]["source_report"]
    images = len(list((raw / "images").glob("*.jpg")))
    skipped = report["without_parsing_mask"] + report["without_shape_labels"]
    assert report["images"] == images and report["kept"] == images - skipped == meta["num_items"]
    assert skipped > 0
    # every item: the labels as written, NA unknown (an outer garment's fabric without one)
    lines = dict(
        (p[0], [int(v) for v in p[1:]])
        for p in (ln.split() for ln in (raw / SHAPE_FILE).read_text().splitlines())
    )
    attrs, known = np.load(root / "attrs.npy"), np.load(root / "known.npy")
    for j, name in enumerate(meta["item_names"]):
        sleeve = lines[name][0]
        cols = [DEEPFASHION_ATTRIBUTES.index(f"sleeve={v}") for v in
                ("sleeveless", "short", "medium", "long", "not_long")]  # fmt: skip
        assert known[j, cols].all() and attrs[j, cols].tolist() == [
            int(k == sleeve) for k in range(5)
        ]
    outer = [i for i, n in enumerate(DEEPFASHION_ATTRIBUTES) if n.startswith("fabric_outer=")]
    cardigan = DEEPFASHION_ATTRIBUTES.index("cardigan=yes")
    assert (known[:, outer].all(1) == (attrs[:, cardigan] == 1)).all()
    masks = np.load(root / "masks.npy")
    assert masks.max() < 24 and set(np.unique(masks)) >= {0, 1, 14, 15}


def test_one_hot_with_na_unknown():
    fields = (("hat", ("no", "yes", "NA")), ("sleeve", ("a", "b", "c", "NA")))
    assert one_hot_labels([1, 3], fields).tolist() == [-1, 1, 0, 0, 0]
    assert one_hot_labels([0, 2], fields).tolist() == [1, -1, -1, -1, 1]
    assert one_hot_labels([2, None], fields).tolist() == [0, 0, 0, 0, 0]


def test_padding_keeps_the_whole_person():
    """A tall 50 x 100 image whose person touches its left and right edges: padded to a square,
    every person pixel is still there (the mask's class counts scale by the area ratio)."""
    mask = np.zeros((100, 50), np.uint8)
    mask[10:90, 0:50] = 1  # the whole width
    mask[0:10, 20:30] = 14
    image = Image.fromarray(np.full((100, 50, 3), 128, np.uint8))
    img, msk, crop, hw = pad_to_square(image, mask, 100)
    assert img.shape == (100, 100, 3) and msk.shape == (100, 100) and hw == (100, 50)
    assert (msk == 1).sum() == 80 * 50 and (msk == 14).sum() == 100
    assert crop == (-0.5, 0.0, 1.5, 1.0)  # the square reaches half a width past each side


def write_line(raw: Path, file: str, line: str) -> Path:
    bad = raw.parent / f"bad_{abs(hash(line))}"
    if bad.exists():
        return bad
    import shutil

    shutil.copytree(raw, bad)
    with open(bad / file, "a") as f:
        f.write(line + "\n")
    return bad


def test_bad_label_lines_are_named(raw):
    name = next((raw / "images").glob("*.jpg")).name
    bad = write_line(raw, SHAPE_FILE, f"{name} 1 2 3")
    with pytest.raises(
        BadInputError, match=r"shape_anno_all.txt:\d+: expected an image name and 12"
    ):
        DeepFashionMM(str(bad))
    bad = write_line(raw, SHAPE_FILE, f"{name} 9 0 0 0 0 0 0 0 0 0 0 0")
    with pytest.raises(BadInputError, match=r"sleeve=9 out of range 0..5 \(5 = NA\)"):
        DeepFashionMM(str(bad))


def test_a_parsing_label_out_of_range_names_the_file(raw, tmp_path):
    import shutil

    bad = tmp_path / "raw"
    shutil.copytree(raw, bad)
    segm = sorted((bad / "segm").glob("*.png"))[0]
    m = np.asarray(Image.open(segm)).copy()
    m[0, 0] = 30
    Image.fromarray(m).save(segm)
    source = DeepFashionMM(str(bad))
    i = next(k for k in range(len(source)) if source._segm(source.items[k]) == segm)
    with pytest.raises(BadInputError, match=f"{segm.name}: label 30, expected 0..23"):
        source.load(i, 32)


def test_missing_folders_are_named(tmp_path):
    with pytest.raises(BadInputError, match="is not a directory"):
        DeepFashionMM(str(tmp_path / "nowhere"))
    (tmp_path / "images").mkdir()
    with pytest.raises(BadInputError, match="shape_anno_all.txt: label file not found"):
        DeepFashionMM(str(tmp_path))


PEOPLE = [
    "experiment=demo_fashion",
    "data.source.num_people=60",
    "data.resolution=16",
    "data.batch_size=4",
    "data.verify_hash=false",
    "denoiser.block_out_channels=[16,32]",
    "denoiser.attention_levels=[false,true]",
    "denoiser.cross_attention_dim=32",
    "denoiser.head_dim=8",
    "denoiser.norm_num_groups=8",
    "trainer.accelerator=cpu",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "logger=csv",
    "~callbacks.progress_bar",
    "trainer.enable_progress_bar=false",
    "callbacks.sample_grid.num_steps=2",
    "callbacks.sample_grid.num_conditions=2",
    "callbacks.sample_grid.samples_per_condition=1",
    "callbacks.fidelity.every_n_steps=0",
    "evaluate_after=false",
]


def test_the_person_recipe_trains_and_its_checkpoint_keeps_the_vocabulary(tmp_path):
    """demo_fashion's recipe (shrunk) trains on SynthPeople; the model is built for 24 classes
    and 80 attributes, samples a 24-class mask, and resuming on face data is refused."""
    from facediff.api import FaceGenerator
    from facediff.cli.train import train
    from facediff.config import compose

    base = [f"paths.data_dir={tmp_path / 'data'}", f"paths.output_dir={tmp_path / 'run'}"]
    cfg = compose("train", base + PEOPLE)
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    gen = FaceGenerator.from_checkpoint(ckpt, device="cpu")
    assert gen.model.data_info["mask_classes"] == list(DEEPFASHION_CLASSES)
    assert gen.model.conditioner.encoders["mask"].num_classes == 24
    mask = np.zeros((16, 16), np.int64)
    mask[2:14, 5:11] = DEEPFASHION_CLASSES.index("dress")  # 4: a class faces do not have...
    mask[0:2, 6:10] = DEEPFASHION_CLASSES.index("tie")  # 23: beyond the face's 0..18
    out = gen.sample(attributes={"sleeve=long": 1}, mask=mask, num_samples=1, seed=0)
    assert out.shape == (1, 16, 16, 3)
    with pytest.raises(ValueError, match="expected 0..23"):
        gen.sample(mask=np.full((16, 16), 24), num_samples=1)
    faces = [o for o in PEOPLE if "num_people" not in o and "demo_fashion" not in o]
    faces += ["experiment=demo", "data.source.num_faces=48", "data.source.image_size=32",
              "data.source.mask_size=32", f"ckpt_path={ckpt}"]  # fmt: skip
    with pytest.raises(ValueError, match="was trained with attr_names .'sleeve=sleeveless'"):
        train(compose("train", base + faces))


def test_a_data_module_built_for_other_classes_is_refused(raw, tmp_path):
    """The face configs say 19 classes: a prepared person set (24) is refused by name."""
    from facediff.data.datamodule import FaceDataModule
    from facediff.data.prepared import prepare

    prepare(DeepFashionMM(str(raw)), tmp_path / "p", 16, progress=False)
    dm = FaceDataModule(str(tmp_path / "p"), 16, num_mask_classes=19, verify_hash=False)
    with pytest.raises(BadInputError, match="data.num_mask_classes=19 but .* has 24 mask classes"):
        dm.setup()
    dm = FaceDataModule(str(tmp_path / "p"), 16, num_mask_classes=24, verify_hash=False)
    item = dm.dataset("train")[(0, True)]  # flipped: no left/right classes, labels kept
    plain = dm.dataset("train")[(0, False)]
    assert (item["mask"] == plain["mask"].flip(-1)).all()


def test_every_person_class_has_its_own_colour():
    """Sample grids colour the mask: DeepFashion's 24 classes, 24 distinct colours."""
    from facediff.visualize import colorize

    colours = colorize(np.arange(24)[None])[0]
    assert colours.shape == (24, 3) and len({tuple(c) for c in colours}) == 24
