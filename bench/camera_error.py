"""How far a moved camera throws an image policy's idea of where things are on the table. Variant
aggregation moves the camera (sim.env.CAMERA_JITTER); the waypoint maps see their peaks on the table
through the calibration (conf/task/bridge.yaml `camera`, the nominal pose). A grasp point drawn where the
objects are placed is projected through a moved camera and seen back through the calibration: the error an
image policy inherits even if its map finds the right pixel. Then the same point moved by the hand
anchor's offset (policies/vipra: where the state puts the hand minus where the calibration sees it), with
the hand at a given distance from the point and 6 cm above it.

    python -m bench.camera_error            # -> reports/bench/camera_error.json (a second, no simulator)
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from bench.common import stamp, write_report
from data.camera import PinholeCamera
from sim.env import CAMERA_JITTER, PLACE_HIGH, PLACE_LOW

GRASP_HEIGHT = 0.03  # m: about where the hand closes on an object
HAND_ABOVE = 0.06  # m: the hand above that point on its way there
HAND_DISTANCES_CM = (3, 8, 15, 25)
TOLERANCE_CM = 2.0  # what the tasks tolerate (reports/bench/tolerance.json)


def moved_camera(calibrated: PinholeCamera, rng: np.random.Generator) -> PinholeCamera:
    """One of variant aggregation's cameras: the calibrated pose and field of view, jittered as the env does."""
    j = CAMERA_JITTER
    return PinholeCamera(
        tuple(np.add(calibrated.pos, rng.uniform(-j["pos"], j["pos"], 3))),
        tuple(np.add(calibrated.target, rng.uniform(-j["target"], j["target"], 3))),
        calibrated.fovy + rng.uniform(-j["fovy"], j["fovy"]),
        calibrated.image_size,
    )


def seen(calibrated: PinholeCamera, camera: PinholeCamera, points: np.ndarray) -> np.ndarray:
    """(N, 3) points -> where the calibration sees them on their own heights' planes through `camera`."""
    return calibrated.backproject(camera.project(points), points[:, 2])


def errors_cm(calibrated: PinholeCamera, draws: int, seed: int) -> dict[str, np.ndarray]:
    """Per draw, the x-y error (cm) of the grasp point seen absolutely and with the hand anchor."""
    rng = np.random.default_rng(seed)
    out = {"absolute": []} | {f"anchored_hand_{d}cm": [] for d in HAND_DISTANCES_CM}
    for _ in range(draws):
        camera = moved_camera(calibrated, rng)
        grasp = np.array([[*rng.uniform(PLACE_LOW, PLACE_HIGH), GRASP_HEIGHT]])
        absolute = seen(calibrated, camera, grasp)
        out["absolute"].append(np.linalg.norm((absolute - grasp)[0, :2]))
        for d in HAND_DISTANCES_CM:
            angle = rng.uniform(0, 2 * np.pi)
            hand = grasp + [[d / 100 * np.cos(angle), d / 100 * np.sin(angle), HAND_ABOVE]]
            offset = hand - seen(calibrated, camera, hand)
            out[f"anchored_hand_{d}cm"].append(np.linalg.norm((absolute + offset - grasp)[0, :2]))
    return {k: 100 * np.array(v) for k, v in out.items()}


def summary(errors: np.ndarray) -> dict[str, float]:
    return {
        "median_cm": round(float(np.median(errors)), 2),
        "p90_cm": round(float(np.percentile(errors, 90)), 2),
        f"within_{TOLERANCE_CM:g}cm": round(float(np.mean(errors <= TOLERANCE_CM)), 3),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=5000, help="cameras (and grasp points) drawn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task-config", type=Path, default=Path("conf/task/bridge.yaml"))
    parser.add_argument("--out", type=Path, default=Path("reports/bench/camera_error.json"))
    args = parser.parse_args(argv)
    task = OmegaConf.load(args.task_config)
    calibrated = PinholeCamera.from_config(OmegaConf.to_container(task.camera), int(task.image_size))
    report = {
        "error": {k: summary(v) for k, v in errors_cm(calibrated, args.draws, args.seed).items()},
        "camera_jitter": CAMERA_JITTER,
        "grasp_height_m": GRASP_HEIGHT,
        "hand_above_m": HAND_ABOVE,
        "draws": args.draws,
    } | stamp("python -m bench.camera_error " + " ".join(sys.argv[1:] if argv is None else argv))
    write_report(args.out, report)
    print(json.dumps(report["error"], indent=1))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
