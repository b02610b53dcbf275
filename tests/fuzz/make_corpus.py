"""Writes the fuzzing seed corpus (tests/fuzz/corpus/), committed with the tests:
`python -m tests.fuzz.make_corpus`. Small valid inputs of each reader: a CelebAMask-HQ archive
(3 faces), a MAAD-Face CSV with its images (4), a prepared folder (3 items at 16 px), and two
mask uploads (a label map, a palette-coloured mask)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from facediff.data.celebamask import CelebAMaskHQ
from facediff.data.labels import MASK_PALETTE, NUM_MASK_CLASSES
from facediff.data.prepared import prepare
from tests.data.fixtures import write_celebamask, write_maad

CORPUS = Path(__file__).parent / "corpus"


def main() -> None:
    shutil.rmtree(CORPUS, ignore_errors=True)
    write_celebamask(CORPUS / "celebamask", n=3, image_size=32, mask_size=16)
    write_maad(CORPUS / "maad", n=4)
    prepare(CelebAMaskHQ(str(CORPUS / "celebamask")), CORPUS / "prepared", 16, progress=False)
    up = CORPUS / "upload"
    up.mkdir()
    labels = (np.arange(16 * 16).reshape(16, 16) % NUM_MASK_CLASSES).astype(np.uint8)
    Image.fromarray(labels).save(up / "labels.png")
    palette = np.asarray(MASK_PALETTE, np.uint8)[labels]
    Image.fromarray(palette).save(up / "colours.png")
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file())
    print(f"{len(files)} files, {sum(p.stat().st_size for p in files):,} bytes in {CORPUS}")


if __name__ == "__main__":
    main()
