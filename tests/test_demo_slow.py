"""Slow (make test-full): a shortened demo learns to follow its masks and attributes."""

import pytest

from facediff.cli.train import train


@pytest.mark.slow
def test_demo_samples_follow_their_own_conditions(make_cfg, tmp_path):
    cfg = make_cfg(
        "experiment=demo",
        f"paths.data_dir={tmp_path / 'data'}",
        "logger=csv",
        "denoiser=unet_small",  # the demo's own UNet, not the tests' tiny one
        "trainer.max_steps=500",
        "trainer.val_check_interval=500",
        "callbacks.sample_grid.every_n_steps=0",
        "data.batch_size=32",
        "data.source.num_faces=400",
        "sampler.num_steps=20",
        "evaluation.parser_steps=200",
        "evaluation.classifier_steps=150",
        "evaluation.num_conditions=40",
    )
    rows = train(cfg)["report"]
    own, shuffled = rows["samples vs own conditions"], rows["samples vs shuffled conditions"]
    assert own["mask_acc"] > shuffled["mask_acc"] + 0.03
    assert own["miou"] > shuffled["miou"]
