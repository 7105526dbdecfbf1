"""bench.anchor_errors: the hand's true pixel through the scene's own camera, and a policy's waypoint errors."""

import numpy as np
import pytest

from bench import anchor_errors
from data.camera import PinholeCamera
from sim.env import TabletopEnv
from tests.bench.test_policy_bench import policy_at_64px
from tests.policies.tiny import save_trained

CAMERA = {"pos": [0.78, 0.0, 0.42], "target": [0.3, 0.0, 0.0], "fovy": 50}


def hand_pixels(factors: tuple[str, ...], scenes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(scenes, 2) the hand's pixel through the scene's camera and through the calibration."""
    env = TabletopEnv("stack_block", "variant_aggregation", variant_factors=factors)
    calibrated = PinholeCamera.from_config(CAMERA, env.image_size)
    true, seen = [], []
    try:
        for seed in range(scenes):
            obs, _ = env.reset(seed=seed)
            hand = obs["agent_pos"][:3].astype(float)
            true.append(anchor_errors.true_pixel(env, hand))
            seen.append(calibrated.project(hand[None])[0])
    finally:
        env.close()
    return np.array(true), np.array(seen)


def test_the_true_pixel_is_the_calibrations_until_the_camera_moves():
    true, seen = hand_pixels(())  # the nominal camera: the calibration is exact
    np.testing.assert_allclose(true, seen, atol=1e-3)
    true, seen = hand_pixels(("camera",))  # moved by up to 4 cm and 3 degrees: pixels off
    assert np.linalg.norm(true - seen, axis=1).min() > 0.1


def test_errors_of_a_policy_with_the_hand_anchor_and_a_refusal_without_maps(tmp_path):
    conv = {"stem": "conv", "stem_stride": 2, "stem_channels": 16}
    hand = {"mean": [0.4, 0.0, 0.1], "std": [0.1, 0.1, 0.05]}
    policy = policy_at_64px(
        waypoint_weight=1.0,
        binary_action_dims=[6],
        backbone=conv,
        camera_calibration=CAMERA,
        waypoint_heights=[0.06, 0.08],
        hand_anchor=True,
        hand_position_stats=hand,
    )
    out = anchor_errors.errors(policy, "stack_block", "camera", scenes=2, seed=1000)
    assert {k: len(v) for k, v in out.items()} == {"close_cm": 2, "close_anchored_cm": 2, "hand_px": 2}
    assert all(np.isfinite(v).all() and (np.asarray(v) >= 0).all() for v in out.values())
    assert out["close_cm"] == anchor_errors.errors(policy, "stack_block", "camera", 2, 1000)["close_cm"]

    save_trained(policy_at_64px().policy, tmp_path / "plain")  # no waypoint maps: nothing to measure
    with pytest.raises(ValueError, match="no waypoint maps"):
        anchor_errors.main([str(tmp_path / "plain"), "--out", str(tmp_path / "ae.json")])
