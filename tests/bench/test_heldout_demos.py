"""bench.heldout_demos scores a trained image policy's chunks and waypoint maps on demos it did not see."""

import json

import pytest

import bench.heldout_demos
from tests.bench.test_policy_bench import policy_at_64px
from tests.policies.tiny import save_trained

CAMERA = {"pos": [0.78, 0.0, 0.42], "target": [0.3, 0.0, 0.0], "fovy": 50}


def test_scores_the_unseen_demos_and_refuses_a_bad_split(datasets, tmp_path):
    conv = {"stem": "conv", "stem_stride": 2, "stem_channels": 16}
    processed = policy_at_64px(
        waypoint_weight=1.0, binary_action_dims=[6], backbone=conv, camera_calibration=CAMERA,
        waypoint_heights=[0.06, 0.08],
    )  # fmt: skip
    save_trained(processed.policy, tmp_path / "run" / "pretrained_model")  # as the trainer lays a run out
    demos, out = str(datasets[0] / "demos"), tmp_path / "heldout.json"
    args = [
        str(tmp_path / "run"),
        "--demos",
        demos,
        "--first-held-out",
        "1",
        "--frames",
        "8",
        "--out",
        str(out),
    ]
    report = bench.heldout_demos.main(args)
    scores = json.loads(out.read_text())["run"]
    assert scores == report["run"] and report["held_out_demos"] == 1 and report["frames"] == 8
    assert {"fm_loss", "chunk_skill", "waypoint_close_cm", "waypoint_open_cm"} <= set(scores)
    assert scores["waypoint_close_cm"] > 0 and scores["chunk_skill"] < 1
    with pytest.raises(ValueError, match="--first-held-out must be in 1..1"):
        bench.heldout_demos.main([*args[:-4], "--first-held-out", "2"])
