"""facediff-app: the page's logic (masks from uploads and paint, bad uploads as messages) and the
page itself driven in a real headless Chromium (Debian's `chromium`, through Playwright)."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from facediff.app import FaceApp, MaskError, attribute_groups, painted_mask, read_mask_file
from facediff.cli.train import train
from facediff.data.labels import MASK_CLASSES, MASK_PALETTE

CHROMIUM = os.environ.get("FACEDIFF_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, data_dir):
    from facediff.config import compose
    from tests.conftest import tiny

    out = tmp_path_factory.mktemp("app")
    over = [
        "conditioner=attr_mask_concat",
        "trainer.max_steps=2",
        "sampler.num_steps=3",
        "data.attributes=[Smiling,Male,Eyeglasses]",
    ]
    base = [f"paths.data_dir={data_dir}", f"paths.output_dir={out / 'run'}"]
    cfg = compose("train", base + tiny(over) + over)
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


def test_uploads_label_maps_palette_images_and_bad_files(tmp_path):
    labels = np.zeros((16, 16), np.uint8)
    labels[4:12, 4:12] = MASK_CLASSES.index("skin")
    labels[2:4] = MASK_CLASSES.index("hair")
    Image.fromarray(labels).save(tmp_path / "grey.png")
    Image.fromarray(MASK_PALETTE[labels]).save(tmp_path / "colour.png")
    for name in ("grey.png", "colour.png"):
        assert torch.equal(read_mask_file(tmp_path / name, 16), torch.as_tensor(labels).long())
    Image.fromarray(labels).resize((32, 32), Image.NEAREST).save(tmp_path / "big.png")
    with pytest.raises(MaskError, match=r"upload big.png: 32x32, the model is 16x16"):
        read_mask_file(tmp_path / "big.png", 16)
    assert read_mask_file(tmp_path / "big.png", 16, resize=True).shape == (16, 16)
    odd = MASK_PALETTE[labels].copy()
    odd[0, 0] = (1, 2, 3)
    Image.fromarray(odd).save(tmp_path / "odd.png")
    with pytest.raises(
        MaskError, match=r"1 colour\(s\) outside the mask palette, e.g. RGB \(1, 2, 3\)"
    ):
        read_mask_file(tmp_path / "odd.png", 16)
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(tmp_path / "values.png")
    with pytest.raises(MaskError, match=r"labels 200..200, expected 0..18"):
        read_mask_file(tmp_path / "values.png", 16)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(MaskError, match="upload notes.png: not an image"):
        read_mask_file(tmp_path / "notes.png", 16)


def test_huge_uploads_are_refused_before_they_are_decoded(tmp_path, monkeypatch):
    """A 6000 x 6000 palette PNG is a ~100 kB file that takes GBs to decode: refused from its
    header (Image.load never runs); a file over the byte limit is refused unread."""
    Image.new("P", (6000, 6000)).save(tmp_path / "bomb.png")
    assert (tmp_path / "bomb.png").stat().st_size < 200_000
    (tmp_path / "heavy.png").write_bytes(b"\x89PNG" + bytes(6_000_000))
    Image.new("L", (100, 100)).save(tmp_path / "small.png")

    def never(self):
        raise AssertionError("decoded")

    monkeypatch.setattr(Image.Image, "load", never)
    monkeypatch.setattr(ImageFile.ImageFile, "load", never)
    with pytest.raises(MaskError, match=r"upload bomb.png: 6000 x 6000 pixels, more than the "
                       r"16,777,216 allowed \(max_upload_pixels\)"):  # fmt: skip
        read_mask_file(tmp_path / "bomb.png", 16, resize=True)
    with pytest.raises(MaskError, match=r"upload heavy.png: 6,000,004 bytes, more than the "
                       r"5,000,000 allowed \(max_upload_bytes\)"):  # fmt: skip
        read_mask_file(tmp_path / "heavy.png", 16)
    with pytest.raises(MaskError, match=r"100 x 100 pixels, more than the 64 allowed"):
        read_mask_file(tmp_path / "small.png", 16, resize=True, max_pixels=64)


def test_painted_mask_takes_the_nearest_palette_colour_at_the_model_size():
    labels = np.zeros((16, 16), np.int64)
    labels[:, 8:] = MASK_CLASSES.index("hair")
    rgb = np.asarray(
        Image.fromarray(MASK_PALETTE[labels]).resize((128, 128), Image.NEAREST)
    ).astype(int)
    rgb = np.clip(rgb + np.random.default_rng(0).integers(-6, 7, rgb.shape), 0, 255)  # brush AA
    got = painted_mask({"composite": rgb.astype(np.uint8)}, 16)
    assert torch.equal(got, torch.as_tensor(labels))
    with pytest.raises(MaskError, match="nothing painted"):
        painted_mask({"composite": None}, 16)


def test_attribute_groups():
    groups = attribute_groups(["Smiling", "Black_Hair", "Eyeglasses", "Male", "Goatee"])
    assert groups == {
        "Mouth": ["Smiling"],
        "Hair": ["Black_Hair"],
        "Accessories": ["Eyeglasses"],
        "Person": ["Male"],
        "Beard": ["Goatee"],
    }


def test_generate_samples_swaps_and_reports_bad_input(ckpt, tmp_path):
    app = FaceApp.from_checkpoint(ckpt, upscale=2)
    assert len(app.masks) > 1  # the model's prepared data is here: validation masks offered
    states = {"Smiling": "+1 present", "Male": "-1 absent", "Eyeglasses": "0 unknown"}
    images, shown, status = app.generate(states, "validation set", 0, steps=2, seed=1)
    assert len(images) == 4 and images[0].size == (32, 32) and shown.size == (32, 32)
    again, _, _ = app.generate(states, "validation set", 0, steps=2, seed=1)
    other, _, _ = app.generate(states, "validation set", 0, steps=2, seed=2)
    assert np.array_equal(np.asarray(images[0]), np.asarray(again[0]))
    assert not np.array_equal(np.asarray(images[0]), np.asarray(other[0]))
    _, swapped, _ = app.generate(states, "validation set", 0, swap=["hair"], swap_index=1, steps=1)
    assert swapped is not None
    (tmp_path / "x.png").write_text("no")
    images, shown, status = app.generate(states, "upload", upload=str(tmp_path / "x.png"))
    assert images == [] and shown is None and "not an image" in status
    images, _, status = app.generate(states, "upload", upload=None)
    assert images == [] and "no file uploaded" in status


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"Chromium not found at {CHROMIUM} (apt-get install chromium; .ci/run installs it)",
)
def test_page_in_a_real_browser(ckpt, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    from facediff.api import load_checkpoint

    # FACEDIFF_APP_CKPT: drive the page on another model (docs/app.png: the demo's)
    ckpt = Path(os.environ.get("FACEDIFF_APP_CKPT") or ckpt)
    res = load_checkpoint(ckpt)["facediff"]["data"]["resolution"]
    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="1")
    server = subprocess.Popen(
        [sys.executable, "-m", "facediff.cli.app", f"ckpt_path={ckpt}", f"port={port}",
         "upscale=4", f"hydra.run.dir={tmp_path / 'log'}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):  # the page is served within a minute
            if server.poll() is not None:
                pytest.fail(f"facediff-app exited: {server.stdout.read()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.25)
        else:
            pytest.fail("facediff-app did not serve the page within 60 s")
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.locator("#attr-Smiling").get_by_text("+1 present").click()
            page.locator("#generate").click()
            first = page.locator("#samples img").first
            first.wait_for(timeout=60_000)
            size = first.evaluate("i => i.complete ? [i.naturalWidth, i.naturalHeight] : null")
            page.wait_for_function(
                "() => { const i = document.querySelector('#samples img');"
                " return i && i.complete && i.naturalWidth > 0 }"
            )
            size = first.evaluate("i => [i.naturalWidth, i.naturalHeight]")
            assert size == [4 * res, 4 * res]  # the samples shown 4x
            before = page.request.get(first.get_attribute("src")).body()
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
            page.locator("#seed input").fill("7")
            page.locator("#generate").click()
            page.wait_for_function(
                "src => { const i = document.querySelector('#samples img');"
                " return i && i.getAttribute('src') !== src && i.complete }",
                arg=first.get_attribute("src"),
            )
            after = page.request.get(
                page.locator("#samples img").first.get_attribute("src")
            ).body()
            assert after != before  # another seed, another face
            # a bad upload is a message in the page
            page.locator("#mask-source").get_by_text("upload").click()
            (tmp_path / "notes.png").write_text("not an image")
            page.locator("#upload input[type=file]").set_input_files(str(tmp_path / "notes.png"))
            page.locator("#generate").click()
            page.locator("#status").get_by_text("not an image").wait_for(timeout=30_000)
            browser.close()
        if os.environ.get("FACEDIFF_APP_SCREENSHOT"):
            shutil.copy(tmp_path / "app.png", os.environ["FACEDIFF_APP_SCREENSHOT"])
    finally:
        server.terminate()
        server.wait(timeout=30)
