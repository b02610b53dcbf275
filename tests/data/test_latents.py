"""Cached first-stage latents: encoded once, equal to the encoder's output (plain and mirrored),
served as batch["latent"], so latent-diffusion training never runs the encoder."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facediff.cli.train import train
from facediff.models.autoencoders import DiffusersAutoencoder


@pytest.mark.slow
def test_latent64_trains_on_cached_latents_without_the_encoder(make_cfg, tmp_path, monkeypatch):
    ae_dir = tmp_path / "ae"
    train(make_cfg("experiment=autoencoder", "trainer.max_steps=2", f"model.output_dir={ae_dir}"))
    overrides = ["experiment=latent64", f"autoencoder.pretrained={ae_dir}", "trainer.max_steps=2"]
    cfg = make_cfg(*overrides)
    assert cfg.latent.cache
    train(cfg)
    root = Path(cfg.data.root)
    (folder,) = [p for p in (root / "latents").iterdir() if p.is_dir()]
    lat = np.load(folder / "latents.npy", mmap_mode="r")
    meta = json.loads((folder / "meta.json").read_text())
    n = json.loads((root / "meta.json").read_text())["num_items"]
    assert lat.shape == (n, 2, 4, 4, 4) and meta["shape"] == list(lat.shape)

    # the cache is the encoder's output, plain and mirrored
    from facediff.data.datamodule import FaceDataModule
    from facediff.data.transforms import hflip

    ae = DiffusersAutoencoder(str(ae_dir))
    img = np.load(root / "images.npy", mmap_mode="r")[:3]
    x = torch.from_numpy(np.array(img)).permute(0, 3, 1, 2).float() / 127.5 - 1
    np.testing.assert_allclose(lat[:3, 0], ae.encode(x).numpy(), atol=1e-5)
    np.testing.assert_allclose(lat[:3, 1], ae.encode(hflip(x, None)[0]).numpy(), atol=1e-5)
    dm = FaceDataModule(str(root), 16, verify_hash=False)
    dm.use_latents(folder)
    ds = dm.dataset("train")
    i = int(ds.indices[0])
    torch.testing.assert_close(ds[(0, True)]["latent"], torch.from_numpy(np.array(lat[i, 1])))

    # a second run reuses the cache and never calls the encoder
    mtime = (folder / "latents.npy").stat().st_mtime_ns

    def no_encoder(self, image):
        raise AssertionError("the encoder ran during training")

    monkeypatch.setattr(DiffusersAutoencoder, "encode", no_encoder)
    train(make_cfg(*overrides, f"paths.output_dir={tmp_path / 'again'}"))
    assert (folder / "latents.npy").stat().st_mtime_ns == mtime

    # a cache that does not match its data set is named, not trusted
    good = (folder / "meta.json").read_text()
    (folder / "meta.json").write_text(json.dumps(meta | {"content_hash": "0" * 64}))
    try:
        with pytest.raises(ValueError, match=r"latents/.*/meta.json: content_hash is"):
            train(make_cfg(*overrides, f"paths.output_dir={tmp_path / 'third'}"))
    finally:  # the data folder is the session's: leave the cache as it was
        (folder / "meta.json").write_text(good)


@pytest.mark.slow
def test_the_fidelity_monitor_gives_a_latent_models_first_stage_ceiling(make_cfg, tmp_path):
    """For a latent model the monitor also scores the real images after the autoencoder's round
    trip (fidelity/<metric>_decoded): the most its samples can reach through that first stage."""
    import csv

    from facediff.data.batch import condition_batch
    from facediff.evaluation.evaluator_cache import evaluators
    from facediff.evaluation.protocol import score
    from facediff.lit.training import build

    ae_dir = tmp_path / "ae"
    train(make_cfg("experiment=autoencoder", "trainer.max_steps=2", f"model.output_dir={ae_dir}"))
    ev = tmp_path / "ev"
    cfg = make_cfg(
        "experiment=latent64",
        f"autoencoder.pretrained={ae_dir}",
        "trainer.max_steps=2",
        "callbacks.fidelity.every_n_steps=2",
        "callbacks.fidelity.num_conditions=3",
        "callbacks.fidelity.num_steps=2",
        f"evaluation.evaluators_dir={ev}",
        "evaluation.parser_steps=2",
        "evaluation.classifier_steps=2",
        f"paths.output_dir={tmp_path / 'latent'}",
    )
    train(cfg)
    (log,) = (tmp_path / "latent").rglob("metrics.csv")
    with open(log) as f:
        (row,) = [r for r in csv.DictReader(f) if r.get("fidelity/miou_decoded")]
    dm, _ = build(cfg)
    parser, classifier = evaluators(dm, ev, 2, 2)
    real = condition_batch(dm, "val", 3)
    ae = DiffusersAutoencoder(str(ae_dir)).eval()
    with torch.no_grad():
        decoded = ae.decode(ae.encode(real["image"])).clamp(-1, 1)
    expected = score(decoded, real, parser, classifier, dm.attr_names)
    for key in ("miou", "mask_acc", "attr_acc"):
        assert float(row[f"fidelity/{key}_decoded"]) == pytest.approx(expected[key], abs=1e-5)
