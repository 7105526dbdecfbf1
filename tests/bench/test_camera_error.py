import numpy as np

from bench import camera_error
from data.camera import PinholeCamera

CALIBRATED = PinholeCamera((0.78, 0.0, 0.42), (0.3, 0.0, 0.0), 50.0, 64)


def test_the_hand_anchor_shrinks_a_moved_cameras_error(tmp_path):
    errors = camera_error.errors_cm(CALIBRATED, 300, seed=0)
    assert np.median(errors["absolute"]) > 1.5  # variant aggregation's camera: centimetres off
    assert np.median(errors["anchored_hand_3cm"]) < 0.3 * np.median(errors["absolute"])
    medians = [np.median(errors[f"anchored_hand_{d}cm"]) for d in camera_error.HAND_DISTANCES_CM]
    assert medians == sorted(medians)  # the farther the hand, the less its offset tells
    report = camera_error.main(["--draws", "20", "--out", str(tmp_path / "ce.json")])
    assert set(report["error"]) == set(errors) and report["draws"] == 20


def test_the_calibrated_camera_sees_every_point_where_it_is(monkeypatch):
    monkeypatch.setattr(camera_error, "CAMERA_JITTER", {"pos": 0.0, "target": 0.0, "fovy": 0.0})
    errors = camera_error.errors_cm(CALIBRATED, 20, seed=1)
    assert all(np.abs(v).max() < 1e-6 for v in errors.values())
