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
