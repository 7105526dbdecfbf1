"""The localization gate: keypoints land where the image is bright, errors are in cm, the bench runs."""

import json

import pytest
import torch

from bench.localization import QUANTITIES, SpatialSoftmax, main, rms_cm


def test_spatial_softmax_finds_the_peak():
    maps = torch.zeros(1, 1, 16, 16)
    maps[0, 0, 4, 12] = 50.0  # row 4 (y), column 12 (x)
    x, y = SpatialSoftmax()(maps)[0]
    assert x == pytest.approx(-1 + 2 * 12 / 15, abs=1e-4) and y == pytest.approx(-1 + 2 * 4 / 15, abs=1e-4)


def test_rms_is_the_xy_distance_in_cm():
    target = torch.zeros(5, 2 * len(QUANTITIES))
    pred = target.clone()
    pred[:, 0], pred[:, 1] = 0.03, 0.04  # the source 5 cm off, the rest exact
    assert rms_cm(pred, target) == {"source_xy": 5.0, "target_xy": 0.0, "hand_xy": 0.0}


def test_the_bench_trains_and_scores_every_encoder(datasets, tmp_path):
    out = tmp_path / "localization.json"
    args = ["--dataset", str(datasets[0] / "demos"), "--steps", "2", "--batch-size", "4", "--out", str(out)]
    main([*args, "--encoders", "cnn,cnn_fine,vit"])
    report = json.loads(out.read_text())
    assert set(report["encoders"]) == {"cnn", "cnn_fine", "vit"}
    for result in [report["constant_rms_cm"], *(e["rms_cm"] for e in report["encoders"].values())]:
        assert set(result) == set(QUANTITIES) and all(0 <= v < 100 for v in result.values())
    assert report["held_out_episodes"] >= 1 and report["train_frames"] > 0 and report["commit"]


def test_unknown_encoder_is_named(datasets, tmp_path):
    args = [
        "--dataset",
        str(datasets[0] / "demos"),
        "--encoders",
        "resnet",
        "--out",
        str(tmp_path / "x.json"),
    ]
    with pytest.raises(ValueError, match="unknown encoders"):
        main(args)


def test_the_heatmap_probe_finds_a_point_its_map_draws():
    """The linear heatmap probe of a frozen map: where one channel draws each frame's point (the others
    noise), the held-out soft-argmax lands on that point within a pixel of the 16x16 map."""
    from bench.localization import heatmap_probe
    from world_model.layers import heatmap_targets

    gen = torch.Generator().manual_seed(0)
    uv = torch.rand(600, 1, 2, generator=gen) * 1.6 - 0.8  # (F, Q=1, 2) in [-1, 1]
    # the log of the target itself: a 1x1 convolution with weight 1 on it reproduces the target exactly
    bump = heatmap_targets(uv, 16).view(600, 1, 16, 16).clamp_min(1e-12).log()
    maps = torch.cat([bump, torch.randn(600, 3, 16, 16, generator=gen) * 0.1], dim=1)  # (F, c=4, 16, 16)
    task = torch.zeros(600, dtype=torch.long)
    found = heatmap_probe(maps[:500], uv[:500], task[:500], maps[500:], task[500:], 1, steps=600, seed=0)
    pixels_off = (found - uv[500:]).norm(dim=-1) * 16 / 2
    assert found.shape == (100, 1, 2) and pixels_off.mean() < 1.0, pixels_off.mean()


def test_bench_lam_names_a_missing_backbone(tmp_path):
    from hydra import compose, initialize

    from bench.lam import feature_probe

    with initialize(version_base="1.3", config_path="../../conf"):
        cfg = compose("config", overrides=[f"bench_lam.backbone={tmp_path / 'none'}"])
    with pytest.raises(FileNotFoundError, match=r"bench_lam.backbone=.*none holds no trained backbone"):
        feature_probe(cfg)
