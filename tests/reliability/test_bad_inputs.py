"""One table of bad inputs through every entry point (prepare, the prepared reader, train,
resume, sample through the API and the CLI, evaluate, checkpoint files, the evaluator cache):
each row is an input, the exception it must raise and words its message must contain. Then
the untrusted-checkpoint tests: a payload that writes a marker file never runs, through any
entry point."""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facediff import checkpoint
from facediff.api import FaceGenerator, load_checkpoint
from facediff.cli.train import train
from facediff.config import compose
from facediff.data.celebamask import CelebAMaskHQ, part_path
from facediff.data.maad_face import MaadFace
from facediff.data.prepared import PreparedDataset, prepare
from facediff.lit.callbacks import AtomicCheckpointIO
from facediff.lit.wandb import run_id_from_checkpoint
from tests.conftest import TINY
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
    # found by the fuzzer (tests/fuzz): each crashed with another exception before
    "attribute file not text (fuzz)": (
        lambda r: (r / ATTR).write_bytes(b"\x96" + (r / ATTR).read_bytes()[1:]),
        rf"{ATTR}: not a text file",
    ),
    "mapping file not text (fuzz)": (
        lambda r: (r / MAPPING).write_bytes(b"\xb9" + (r / MAPPING).read_bytes()[1:]),
        r"CelebA-HQ-to-CelebA-mapping\.txt: not a text file",
    ),
    "mapping index negative (fuzz)": (
        lambda r: lines_edit(r / MAPPING, lambda ls: ls.__setitem__(1, "-1" + ls[1][1:])),
        r"mapping\.txt:2: expected 'idx orig_idx orig_file' with idx in \[0, 3\)",
    ),
}
MAPPING = "CelebA-HQ-to-CelebA-mapping.txt"


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
    "maad not text (fuzz)": (
        lambda csv: csv.write_bytes(b"\xcc" + csv.read_bytes()[1:]),
        r"MAAD_Face\.csv: not a text CSV",
    ),
    "maad field over the csv limit": (
        lambda csv: csv.write_text(csv.read_text() + '"' + "x" * 140_000 + "\n"),
        r"MAAD_Face\.csv: not a well-formed CSV",
    ),
    "maad unknown attribute": (
        None,
        r"data\.attributes: unknown attribute name\(s\) \['Smiling_'\]",
    ),
}


# ----------------------------------------------------------------------- prepared folders
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
    # found by the fuzzer (tests/fuzz)
    "meta.json not text (fuzz)": (
        lambda p: (p / "meta.json").write_bytes(b"\x84" + (p / "meta.json").read_bytes()[1:]),
        r"meta\.json: unreadable \('utf-8' codec",
    ),
    "meta.json field of the wrong type (fuzz)": (
        lambda p: meta_edit(p, has_masks="yes"),
        r"meta\.json: has_masks: expected true or false, got 'yes'",
    ),
    "meta.json split out of range (fuzz)": (
        lambda p: meta_edit(p, splits={"train": [0, 99]}),
        r"meta\.json: splits\.train: expected item indices in \[0, 3\)",
    ),
    "npy header numpy cannot parse (fuzz)": (
        lambda p: (p / "attrs.npy").write_bytes(
            (p / "attrs.npy").read_bytes().replace(b"{", b"{\x00", 1)
        ),
        r"attrs\.npy: unreadable \(",
    ),
}


def meta_edit(p, **fields):
    meta = json.loads((p / "meta.json").read_text())
    (p / "meta.json").write_text(json.dumps(meta | fields))


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


PREPARED_CASES |= {
    "prepared array truncated": (
        lambda p: (p / "masks.npy").write_bytes((p / "masks.npy").read_bytes()[:300]),
        r"masks\.npy: unreadable .*expected uint8 \(3, 16, 16\)",
    ),
    "prepared array of another dtype": (
        lambda p: np.save(p / "crop.npy", np.load(p / "crop.npy").astype(np.float64)),
        r"crop\.npy: float64 \(3, 4\), meta\.json says float32 \(3, 4\)",
    ),
    "prepared array of another shape": (
        lambda p: np.save(p / "attrs.npy", np.load(p / "attrs.npy")[:, :5]),
        r"attrs\.npy: int8 \(3, 5\), meta\.json says int8 \(3, 40\)",
    ),
}

SAMPLE_CASES = {  # FaceGenerator.sample(num_steps=2, **kwargs)
    "unknown attribute": (dict(attributes={"Wings": 1}), r"attributes: unknown name 'Wings'"),
    "attribute value nan": (dict(attributes={"Male": float("nan")}), r"attributes\['Male'\]=nan"),
    "attribute value 2": (dict(attributes={"Male": 2}), r"attributes\['Male'\]=2: expected 1"),
    "attribute value a string": (dict(attributes={"Male": "yes"}), r"attributes\['Male'\]='yes'"),
    "mask labels out of range": (
        dict(mask=np.full((16, 16), 30)),
        r"mask: labels 30\.\.30, expected 0\.\.18",
    ),
    "mask of wrong rank": (
        dict(mask=np.zeros((2, 16, 16))),
        r"mask: expected a \(H, W\) label map",
    ),
    "mask of floats": (
        dict(mask=np.full((16, 16), 0.5)),
        r"mask: labels must be integers 0\.\.18",
    ),
    "mask of another size": (dict(mask=np.zeros((5, 7), int)), r"mask: 5x7, the model is 16x16"),
    "mask file not an image": ("mask_file", r"mask=.*not_a_mask\.png: not a readable PNG"),
    "guidance for an unknown condition": (
        dict(guidance_scale={"text": 2.0}),
        r"\['text'\] the model was not trained with",
    ),
    "guidance nan": (dict(guidance_scale=float("nan")), r"guidance_scale=nan: expected a finite"),
    "guidance inf": (dict(guidance_scale=float("inf")), r"guidance_scale=inf: expected a finite"),
    "guidance nan for one condition": (
        dict(guidance_scale={"attrs": float("nan"), "mask": 1.0}),
        r"guidance_scale\['attrs'\]=nan: expected a finite number",
    ),
    "guidance a boolean": (dict(guidance_scale=True), r"guidance_scale=True: expected a finite"),
    "eta nan": (dict(eta=float("nan")), r"eta=nan: expected a finite number"),
    "eta above 1": (dict(eta=1.5), r"eta=1\.5: expected a number in \[0, 1\]"),
    "steps 0": (dict(num_steps=0), r"num_steps=0: expected an integer >= 1"),
    "steps negative": (dict(num_steps=-3), r"num_steps=-3: expected an integer >= 1"),
    "steps fractional": (dict(num_steps=2.5), r"num_steps=2\.5: expected an integer >= 1"),
    "num_samples 0": (dict(num_samples=0), r"num_samples=0: expected an integer >= 1"),
    "num_samples negative": (dict(num_samples=-1), r"num_samples=-1: expected an integer >= 1"),
}

SAMPLE_CLI_CASES = {  # facediff-sample ckpt_path=<the trained run> ...
    "cli guidance nan": (["guidance_scale=nan"], r"guidance_scale=nan: expected a finite"),
    "cli guidance dict with inf": (
        ["guidance_scale={attrs: inf}"],
        r"guidance_scale\['attrs'\]=inf",
    ),
    "cli steps 0": (["num_steps=0"], r"num_steps=0: expected an integer >= 1"),
    "cli eta nan": (["eta=nan"], r"eta=nan: expected a finite number"),
    "cli num_samples 0": (["num_samples=0"], r"num_samples=0: expected an integer >= 1"),
}

EVAL_CASES = {  # facediff-evaluate ckpt_path=<the trained run> evaluation....
    "eval batch_size 0": (["evaluation.batch_size=0"], r"evaluation\.batch_size=0: expected an"),
    "eval num_conditions 0": (
        ["evaluation.num_conditions=0"],
        r"evaluation\.num_conditions=0: expected an integer >= 1",
    ),
    "eval kid subset above samples": (
        ["evaluation.num_conditions=4", "evaluation.kid_subset_size=50"],
        r"evaluation\.kid_subset_size=50 exceeds the evaluation\.num_conditions=4",
    ),
    "eval steps 0": (["evaluation.num_steps=0"], r"evaluation\.num_steps=0: expected an integer"),
    "eval guidance nan": (["evaluation.guidance_scale=nan"], r"evaluation\.guidance_scale=nan"),
    "eval sampler unknown": (["evaluation.sampler=dpm3"], r"evaluation\.sampler='dpm3': not an"),
    "eval diversity unknown": (["evaluation.diversity=ssim"], r"evaluation\.diversity='ssim'"),
    "eval variant unknown option": (
        ["evaluation.variants={d:{etta:0.0}}"],
        r"evaluation\.variants\.d: unknown option\(s\) \['etta'\]",
    ),
    "eval variant bad value": (
        ["evaluation.variants={s:{eta:2.0}}"],
        r"evaluation\.variants\.s: evaluation\.eta=2\.0",
    ),
    "eval variant not a mapping": (
        ["evaluation.variants={d:0.0}"],
        r"evaluation\.variants\.d=0\.0: expected a mapping of evaluation options",
    ),
    "eval inception file missing": (
        ["evaluation.inception=/nowhere/inception.pt"],
        r"/nowhere/inception\.pt",
    ),
}

TRAIN_CASES |= {
    "ema decay above 1": (["model.ema_decay=1.5"], r"model\.ema_decay=1\.5: expected a number in"),
    "ema decay nan": (["model.ema_decay=nan"], r"model\.ema_decay=nan: expected a number in"),
    "learning rate nan": (["model.optimizer.lr=nan"], r"model\.optimizer\.lr=nan: expected a"),
    "learning rate negative": (["model.optimizer.lr=-0.1"], r"model\.optimizer\.lr=-0\.1"),
    "weight decay negative": (
        ["model.optimizer.weight_decay=-1"],
        r"model\.optimizer\.weight_decay=-1",
    ),
    "warm-up negative": (["model.lr_warmup_steps=-5"], r"model\.lr_warmup_steps=-5: expected"),
    "batch larger than the train split": (
        ["data.batch_size=1000"],
        r"data\.batch_size=1000 exceeds the \d+ items of the train split",
    ),
}


# ------------------------------------------------------------------------------- the table
class Ctx:
    """What a row's action needs, made on demand."""

    def __init__(self, tmp_path, make_cfg, run, monkeypatch):
        self.tmp, self.make_cfg, self._run, self.monkeypatch = tmp_path, make_cfg, run, monkeypatch

    @property
    def run(self):  # (generator, checkpoint path) of one tiny trained model per module
        return self._run()

    def prepared(self) -> Path:
        write_celebamask(self.tmp / "raw", n=3)
        prepare(CelebAMaskHQ(str(self.tmp / "raw")), self.tmp / "prep", 16, progress=False)
        return self.tmp / "prep"


def _raw(case):
    damage, _ = RAW_CASES[case]
    return lambda t: celeb(t.tmp, damage)


def _maad(case):
    damage, _ = MAAD_CASES[case]

    def act(t):
        csv, images, _, _ = write_maad(t.tmp)
        attrs = ["Smiling_"] if damage is None else None
        if damage is not None:
            damage(csv)
        prepare(
            MaadFace(str(images), str(csv), attributes=attrs, val_size=2),
            t.tmp / "p",
            16,
            progress=False,
        )

    return act


def _prepared(case):
    damage, _ = PREPARED_CASES[case]

    def act(t):
        p = t.prepared()
        damage(p)
        PreparedDataset(p, verify=True)

    return act


def _train(case):
    overrides, _ = TRAIN_CASES[case]
    if case == "guidance for an untrained condition":
        overrides = ["conditioner=attr", "sampler.guidance_scale={mask: 2.0}"]
    return lambda t: train(t.make_cfg(*overrides, "trainer.fast_dev_run=true"))


def _sample(case):
    kwargs, _ = SAMPLE_CASES[case]

    def act(t):
        kw = kwargs
        if kwargs == "mask_file":
            (t.tmp / "not_a_mask.png").write_text("hello")
            kw = {"mask": t.tmp / "not_a_mask.png"}
        t.run[0].sample(**({"num_steps": 2} | kw))

    return act


def _sample_cli(case):
    overrides, _ = SAMPLE_CLI_CASES[case]

    def act(t):
        from facediff.cli.sample import sample

        sample(
            compose(
                "sample",
                [f"ckpt_path={t.run[1]}", f"output_dir={t.tmp / 's'}", "num_steps=2", *overrides],
            )
        )

    return act


def _evaluate(case):
    overrides, _ = EVAL_CASES[case]

    def act(t):
        from facediff.cli.evaluate import evaluate

        evaluate(
            compose("evaluate", [f"ckpt_path={t.run[1]}", f"output_dir={t.tmp / 'e'}", *overrides])
        )

    return act


def copy_ckpt(t, edit, name="edited.ckpt") -> Path:
    """The trained run's checkpoint with `edit(dict)` applied, saved under tmp."""
    state = checkpoint.load(t.run[1])
    edit(state)
    torch.save(state, t.tmp / name)
    return t.tmp / name


def change_bytes(path: Path) -> Path:
    """Overwrite 4 KB inside the largest record of a torch zip, its structure intact."""
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        size = min(4096, info.file_size // 2)
        f.seek(start + info.file_size // 4)
        block = bytearray(f.read(size))
        f.seek(start + info.file_size // 4)
        f.write(bytes(b ^ 0xFF for b in block))
    return path


def damaged_copy(t) -> Path:
    shutil.copy(t.run[1], t.tmp / "damaged.ckpt")
    return change_bytes(t.tmp / "damaged.ckpt")


def resume_with(t, *overrides):
    train(
        t.make_cfg(
            "conditioner=attr_mask_concat",
            *overrides,
            f"ckpt_path={t.run[1]}",
            "trainer.max_steps=3",
        )
    )


def sample_on_changed_data(t):
    """facediff-sample from_split=val on a prepared folder changed after prepare."""
    from facediff.cli.sample import sample

    root = Path(checkpoint.load(t.run[1])["facediff"]["data"]["root"])
    copy = t.tmp / root.name
    shutil.copytree(root, copy)
    images = np.load(copy / "images.npy")
    images[:2] ^= 0xFF
    np.save(copy / "images.npy", images)
    ckpt = copy_ckpt(t, lambda s: s["facediff"]["data"].update(root=str(copy)))
    sample(
        compose(
            "sample",
            [f"ckpt_path={ckpt}", f"output_dir={t.tmp / 's'}", "from_split=val", "num_steps=2"],
        )
    )


def cached_evaluator(t, write):
    """facediff-evaluate with a cached face_parser.ckpt that `write(path)` made."""
    from facediff.cli.evaluate import evaluate

    ev = t.tmp / "ev"
    ev.mkdir()
    write(ev / "face_parser.ckpt")
    evaluate(
        compose(
            "evaluate",
            [
                f"ckpt_path={t.run[1]}",
                f"output_dir={t.tmp / 'e'}",
                f"evaluation.evaluators_dir={ev}",
            ],
        )
    )


def full_disk(t):
    def no_space(obj, f, *args, **kwargs):
        f.write(b"x" * 1000)
        raise RuntimeError("unexpected pos 28238720 vs 28238612") from OSError(
            errno.ENOSPC, "No space left on device"
        )

    t.monkeypatch.setattr(torch, "save", no_space)
    try:
        AtomicCheckpointIO().save_checkpoint({"w": torch.ones(3)}, t.tmp / "last.ckpt")
    finally:
        assert not list(t.tmp.glob("last.ckpt.tmp*"))  # the temp file is gone


def zip_version_999(t) -> Path:
    """A checkpoint whose first central-directory entry asks for zip version 99.9 (found by
    the fuzzer: zipfile raised NotImplementedError)."""
    torch.save({"w": torch.ones(2)}, t.tmp / "v.ckpt")
    data = bytearray((t.tmp / "v.ckpt").read_bytes())
    at = data.index(b"PK\x01\x02")
    data[at + 6 : at + 8] = (999).to_bytes(2, "little")
    (t.tmp / "v.ckpt").write_bytes(bytes(data))
    return t.tmp / "v.ckpt"


def upload(t, name: str, write) -> Path:
    write(t.tmp / name)
    return t.tmp / name


def prepared_then_reconfigured(t) -> None:
    """A prepared folder reused by a data module configured with other source options."""
    from functools import partial

    from facediff.data.datamodule import FaceDataModule
    from facediff.data.synthfaces import SynthFaces

    def dm(n):
        source = partial(SynthFaces, num_faces=n, image_size=32, mask_size=32, num_workers=1)
        return FaceDataModule(str(t.tmp / "p"), 16, source=source, raw_dir=str(t.tmp / "raw"))

    dm(12).prepare_data()
    dm(10).prepare_data()


OTHER = {  # name: (action, exception, message)
    "app upload declaring 6000 x 6000 pixels": (
        lambda t: __import__("facediff.app", fromlist=["a"]).read_mask_file(
            upload(t, "bomb.png", lambda p: Image.new("P", (6000, 6000)).save(p)), 16, True
        ),
        ValueError,
        r"upload bomb\.png: 6000 x 6000 pixels, more than the 16,777,216 allowed",
    ),
    "app upload over the byte limit": (
        lambda t: __import__("facediff.app", fromlist=["a"]).read_mask_file(
            upload(t, "big.png", lambda p: p.write_bytes(bytes(6_000_000))), 16
        ),
        ValueError,
        r"upload big\.png: 6,000,000 bytes, more than the 5,000,000 allowed",
    ),
    "prepared folder reused for other source options": (
        prepared_then_reconfigured,
        ValueError,
        r"meta\.json: this folder was prepared from other data .*data\.source\.num_faces: "
        r"prepared from 12, configured 10",
    ),
    "checkpoint asking for an unknown zip version (fuzz)": (
        lambda t: checkpoint.load(zip_version_999(t)),
        ValueError,
        r"v\.ckpt: not a torch checkpoint \(a damaged zip archive: NotImplementedError",
    ),
    "checkpoint missing": (
        lambda t: load_checkpoint(t.tmp / "nothing.ckpt"),
        FileNotFoundError,
        r"nothing\.ckpt: no such checkpoint",
    ),
    "checkpoint of something else": (
        lambda t: (
            torch.save({"state_dict": {}}, t.tmp / "other.ckpt"),
            load_checkpoint(t.tmp / "other.ckpt"),
        ),
        ValueError,
        r"other\.ckpt: not a facediff-train checkpoint",
    ),
    "checkpoint empty (a full disk)": (
        lambda t: ((t.tmp / "empty.ckpt").write_bytes(b""), load_checkpoint(t.tmp / "empty.ckpt")),
        ValueError,
        r"empty\.ckpt: empty file \(0 bytes",
    ),
    "checkpoint truncated": (
        lambda t: (
            (t.tmp / "half.ckpt").write_bytes(t.run[1].read_bytes()[:5000]),
            load_checkpoint(t.tmp / "half.ckpt"),
        ),
        ValueError,
        r"half\.ckpt: not a torch checkpoint \(not a whole zip archive",
    ),
    "checkpoint a text file": (
        lambda t: (
            (t.tmp / "notes.ckpt").write_text("hello"),
            load_checkpoint(t.tmp / "notes.ckpt"),
        ),
        ValueError,
        r"notes\.ckpt: not a torch checkpoint",
    ),
    "checkpoint bytes changed": (
        lambda t: load_checkpoint(damaged_copy(t)),
        ValueError,
        r"damaged\.ckpt: record .* does not match its CRC-32",
    ),
    "checkpoint bytes changed, resumed": (
        lambda t: train(t.make_cfg(f"ckpt_path={damaged_copy(t)}", "trainer.max_steps=3")),
        ValueError,
        r"damaged\.ckpt: record .* CRC-32",
    ),
    "checkpoint bytes changed, sampled by the CLI": (
        lambda t: __import__("facediff.cli.sample", fromlist=["sample"]).sample(
            compose("sample", [f"ckpt_path={damaged_copy(t)}", f"output_dir={t.tmp / 's'}"])
        ),
        ValueError,
        r"damaged\.ckpt: record .* CRC-32",
    ),
    "resume at another resolution": (
        lambda t: resume_with(t, "data.resolution=8"),
        ValueError,
        r"trained with resolution 16, this run has 8 \(data\.resolution\)",
    ),
    "resume with the attributes reordered": (
        lambda t: resume_with(
            t, "data.attributes=[" + ",".join(reversed(t.run[0].attr_names)) + "]"
        ),
        ValueError,
        r"trained with attr_names \['Male', .*this run has \['Rosy_Cheeks', .*\(data\.attributes\)",
    ),
    "resume from a checkpoint of something else": (
        lambda t: train(
            t.make_cfg(
                f"ckpt_path={copy_ckpt(t, lambda s: s.pop('facediff'))}", "trainer.max_steps=3"
            )
        ),
        ValueError,
        r"edited\.ckpt: not a facediff-train checkpoint",
    ),
    "sample from changed data": (
        sample_on_changed_data,
        ValueError,
        r"content hash .* does not match",
    ),
    "cached evaluator empty": (
        lambda t: cached_evaluator(t, lambda p: p.write_bytes(b"")),
        ValueError,
        r"face_parser\.ckpt: empty file",
    ),
    "cached evaluator not one": (
        lambda t: cached_evaluator(t, lambda p: torch.save({"state_dict": {}}, p)),
        ValueError,
        r"face_parser\.ckpt: not a FaceParser \(facediff-train experiment=eval_parser\) checkpoint",
    ),
    "checkpoint write on a full disk": (
        full_disk,
        OSError,
        r"last\.ckpt: checkpoint not written, no space left",
    ),
    "evaluate with neither input": (
        lambda t: __import__("facediff.cli.evaluate", fromlist=["evaluate"]).evaluate(
            compose("evaluate", [f"output_dir={t.tmp / 'e'}"])
        ),
        ValueError,
        r"give exactly one of ckpt_path=PATH or images_dir=DIR",
    ),
}

TABLE = (
    [(f"raw: {k}", _raw(k), ValueError, m) for k, (_, m) in RAW_CASES.items()]
    + [(f"maad: {k}", _maad(k), ValueError, m) for k, (_, m) in MAAD_CASES.items()]
    + [(f"prepared: {k}", _prepared(k), ValueError, m) for k, (_, m) in PREPARED_CASES.items()]
    + [
        (f"train: {k}", _train(k), (ValueError, FileNotFoundError), m)
        for k, (_, m) in TRAIN_CASES.items()
    ]
    + [(f"sample api: {k}", _sample(k), ValueError, m) for k, (_, m) in SAMPLE_CASES.items()]
    + [
        (f"sample cli: {k}", _sample_cli(k), ValueError, m)
        for k, (_, m) in SAMPLE_CLI_CASES.items()
    ]
    + [
        (f"evaluate: {k}", _evaluate(k), (ValueError, FileNotFoundError), m)
        for k, (_, m) in EVAL_CASES.items()
    ]
    + [(k, a, e, m) for k, (a, e, m) in OTHER.items()]
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """A tiny trained run (attributes + mask), made once for the rows that need one."""
    made = {}

    def get():
        if not made:
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
            ckpt = out / "checkpoints" / "last.ckpt"
            made["run"] = (FaceGenerator.from_checkpoint(ckpt), ckpt)
        return made["run"]

    return get


def test_the_table_has_every_case():
    assert len(TABLE) >= 60 and len({row[0] for row in TABLE}) == len(TABLE)


@pytest.mark.parametrize(
    ("name", "action", "exception", "message"), TABLE, ids=[r[0] for r in TABLE]
)
def test_bad_input(name, action, exception, message, tmp_path, make_cfg, trained, monkeypatch):
    with pytest.raises(exception, match=message):
        action(Ctx(tmp_path, make_cfg, trained, monkeypatch))


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


def test_a_resized_mask_only_when_asked(trained):
    gen = trained()[0]
    out = gen.sample(mask=np.zeros((5, 7), int), resize_mask=True, num_samples=1, num_steps=2)
    assert out.shape == (1, 16, 16, 3)


def test_a_checkpoint_of_a_run_that_stopped_early_is_read_with_a_warning(
    tmp_path, make_cfg, trained, monkeypatch, caplog
):
    """A last.ckpt written before its run reached max_steps (a SIGTERM, an error) is a model
    half-trained: sampling or evaluating it says so, naming the step and how to finish it."""
    t = Ctx(tmp_path, make_cfg, trained, monkeypatch)
    step = checkpoint.load(t.run[1])["global_step"]
    with caplog.at_level("WARNING", logger="facediff.api"):
        load_checkpoint(t.run[1])
    assert "stopped before the end" not in caplog.text  # the run finished
    ckpt = copy_ckpt(t, lambda s: s["facediff"]["config"]["trainer"].update(max_steps=1000))
    with caplog.at_level("WARNING", logger="facediff.api"):
        FaceGenerator.from_checkpoint(ckpt)
    assert f"edited.ckpt: written at step {step} of trainer.max_steps=1000" in caplog.text
    assert f"ckpt_path={ckpt}" in caplog.text


def test_a_checkpoint_from_other_code_is_noted(tmp_path, make_cfg, trained, monkeypatch, caplog):
    """Written by another facediff version: said in the log and recorded in metrics.json."""
    from facediff.cli.evaluate import evaluate
    from facediff.provenance import LOADED

    t = Ctx(tmp_path, make_cfg, trained, monkeypatch)
    with caplog.at_level("WARNING", logger="facediff.api"):
        load_checkpoint(t.run[1])
    assert "written by facediff" not in caplog.text  # this code wrote it
    ckpt = copy_ckpt(t, lambda s: s["facediff"].update(code="0123456789ab"))
    with caplog.at_level("WARNING", logger="facediff.api"):
        FaceGenerator.from_checkpoint(ckpt)
    assert (
        f"edited.ckpt: written by facediff 0123456789ab, read by facediff {LOADED}" in caplog.text
    )
    protocol = ["evaluation.num_conditions=3", "evaluation.parser_steps=2",
                "evaluation.classifier_steps=2", "evaluation.kid_subset_size=2",
                "evaluation.diversity_conditions=0", "evaluation.num_steps=2",
                f"evaluation.evaluators_dir={tmp_path / 'ev'}"]  # fmt: skip
    metrics = evaluate(compose("evaluate", [f"ckpt_path={ckpt}", f"output_dir={tmp_path / 'e'}",
                                            *protocol]))  # fmt: skip
    assert metrics["ckpt_code"] == "0123456789ab"


# ------------------------------------------------------------------ untrusted checkpoints
class Payload:
    """Pickles as a call to os.system: loading it unsafely would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious(t, name="evil.ckpt") -> Path:
    """A facediff-looking checkpoint (the trained run's) with a payload inside."""
    state = checkpoint.load(t.run[1])
    state["extra"] = Payload(t.tmp / "PWNED")
    torch.save(state, t.tmp / name)
    return t.tmp / name


ENTRY_POINTS = {
    "FaceGenerator.from_checkpoint": lambda t, p: FaceGenerator.from_checkpoint(p),
    "facediff-sample": lambda t, p: __import__("facediff.cli.sample", fromlist=["s"]).sample(
        compose("sample", [f"ckpt_path={p}", f"output_dir={t.tmp / 's'}"])
    ),
    "facediff-evaluate": lambda t, p: __import__("facediff.cli.evaluate", fromlist=["e"]).evaluate(
        compose("evaluate", [f"ckpt_path={p}", f"output_dir={t.tmp / 'e'}"])
    ),
    "facediff-train ckpt_path= (W&B logger)": lambda t, p: train(
        t.make_cfg(
            "conditioner=attr_mask_concat",
            "logger=wandb_csv",
            f"ckpt_path={p}",
            "trainer.max_steps=3",
        )
    ),
    "W&B run-id lookup": lambda t, p: run_id_from_checkpoint(p),
    "Lightning's resume read": lambda t, p: AtomicCheckpointIO().load_checkpoint(p),
    "cached evaluator": lambda t, p: cached_evaluator(t, lambda dst: shutil.copy(p, dst)),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_a_malicious_checkpoint_never_runs(entry, tmp_path, make_cfg, trained, monkeypatch):
    t = Ctx(tmp_path, make_cfg, trained, monkeypatch)
    path = malicious(t)
    with pytest.raises(ValueError, match=r"(evil|face_parser)\.ckpt: refused: it holds pickled"):
        ENTRY_POINTS[entry](t, path)
    assert not (tmp_path / "PWNED").exists()
    # the same file, unpickled without weights_only, does run the payload: the refusal above
    # is what stood between it and the user
    torch.load(path, map_location="cpu", weights_only=False)
    assert (tmp_path / "PWNED").exists()


# --------------------------------------------- untrusted configs inside a checkpoint (#24)
def _pickle_gadget(t) -> dict:
    """The reported gadget: torch.load(weights_only=False) of base64 bytes holding a pickle
    that runs os.system; Hydra's own blocklist lets it through."""
    import base64
    import pickle

    payload = base64.b64encode(pickle.dumps(Payload(t.tmp / "PWNED"))).decode()
    b64 = {"_target_": "base64.b64decode", "s": payload}
    f = {"_target_": "io.BytesIO", "initial_bytes": b64}
    return {"_target_": "torch.load", "weights_only": False, "f": f}


def _import_gadget(t) -> dict:
    """hydra.utils.get_class importing a module whose import runs code."""
    (t.tmp / "facediff_gadget.py").write_text(
        f"import pathlib\npathlib.Path({str(t.tmp / 'PWNED')!r}).touch()\nclass Evil: pass\n"
    )
    t.monkeypatch.syspath_prepend(str(t.tmp))
    return {"_target_": "hydra.utils.get_class", "path": "facediff_gadget.Evil"}


CONFIG_GADGETS = {  # (where in config.model, what, the message)
    "torch.load of a pickle": (
        ("conditioner", "encoders", "attrs", "dropout"),
        _pickle_gadget,
        r"conditioner\.encoders\.attrs\.dropout\._target_='torch\.load': refused",
    ),
    "os.system": (
        ("loss", "weighting"),
        lambda t: {"_target_": "os.system", "command": f"touch {t.tmp / 'PWNED'}"},
        r"loss\.weighting\._target_='os\.system': refused",
    ),
    "an import with side effects": (
        ("sampler", "scheduler"),
        _import_gadget,
        r"sampler\.scheduler\.path='facediff_gadget\.Evil': hydra\.utils\.get_class may only",
    ),
    "the model itself": (
        (),
        lambda t: {"_target_": "builtins.exec", "source": "open('PWNED', 'w')"},
        r"model\._target_='builtins\.exec': expected facediff\.lit\.diffusion\.LatentDiffusion",
    ),
}
CONFIG_ENTRY_POINTS = {
    "load_model": lambda t, p: __import__("facediff").load_model(p),
    "FaceGenerator.from_checkpoint": ENTRY_POINTS["FaceGenerator.from_checkpoint"],
    "facediff-sample": ENTRY_POINTS["facediff-sample"],
    "facediff-evaluate": ENTRY_POINTS["facediff-evaluate"],
    "facediff-export": lambda t, p: __import__("facediff.export", fromlist=["e"]).export(
        p, t.tmp / "pipe"
    ),
    "facediff-app": lambda t, p: __import__(
        "facediff.app", fromlist=["a"]
    ).FaceApp.from_checkpoint(p),
}


@pytest.mark.parametrize("gadget", list(CONFIG_GADGETS))
@pytest.mark.parametrize("entry", list(CONFIG_ENTRY_POINTS))
def test_a_checkpoints_config_never_runs_code(
    gadget, entry, tmp_path, make_cfg, trained, monkeypatch
):
    """A checkpoint that passes the CRC check and weights_only=True (tensors, strings and
    dicts only) but whose recorded config names code: refused before anything is built, the
    key and the target named, through every entry point that builds a model from it."""
    t = Ctx(tmp_path, make_cfg, trained, monkeypatch)
    keys, make, message = CONFIG_GADGETS[gadget]

    def plant(state):
        node = state["facediff"]["config"]["model"]
        if not keys:
            state["facediff"]["config"]["model"] = make(t)
            return
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = make(t)

    path = copy_ckpt(t, plant, "gadget.ckpt")
    checkpoint.load(path)  # it is a well-formed, tensors-only checkpoint
    with pytest.raises(ValueError, match=message) as e:
        CONFIG_ENTRY_POINTS[entry](t, path)
    assert "gadget.ckpt" in str(e.value)
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "pipe").exists()
    assert not list(tmp_path.glob(".pipe.*"))  # a refused export leaves no temp folder


def test_allow_targets_is_the_users_explicit_opt_in(tmp_path, make_cfg, trained, monkeypatch):
    """A class of the user's own is built only when they name it."""
    t = Ctx(tmp_path, make_cfg, trained, monkeypatch)

    def plant(state):
        state["facediff"]["config"]["model"]["loss"]["weighting"] = {
            "_target_": "tests.reliability.test_bad_inputs.MyWeighting"
        }

    path = copy_ckpt(t, plant, "mine.ckpt")
    with pytest.raises(ValueError, match="allow_targets=\\['tests.reliability.test_bad_inputs"):
        FaceGenerator.from_checkpoint(path)
    gen = FaceGenerator.from_checkpoint(
        path, allow_targets=["tests.reliability.test_bad_inputs.MyWeighting"]
    )
    assert isinstance(gen.model.loss.weighting, MyWeighting)


class MyWeighting(torch.nn.Module):
    """A user's own loss weighting (constant 1)."""

    def forward(self, snr, prediction_type):
        return torch.ones_like(snr)
