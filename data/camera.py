"""A calibrated pinhole camera: where a point of the robot's frame appears in the image, and back.

The tabletop's camera is fixed and known (conf/task/bridge.yaml `camera`, the env's nominal pose), as a
real setup's hand-eye calibration is. Policies use it to turn the demos' own robot states (where the
hand closed, where it opened) into pixel labels: no object pose is read.

    camera = PinholeCamera(pos=(0.78, 0, 0.42), target=(0.3, 0, 0), fovy=50, image_size=64)
    uv = camera.project(points)            # (N, 3) metres -> (N, 2) pixels, u right, v down
    camera.backproject(uv, z=0.03)         # (N, 2) pixels -> (N, 3) points on the plane at height z
"""

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PinholeCamera:
    pos: tuple[float, float, float]  # metres, in the robot's frame (x away from the base, z up)
    target: tuple[float, float, float]  # the point it looks at (z up is the image's up)
    fovy: float  # vertical field of view, degrees (MuJoCo's convention)
    image_size: int  # square images

    @classmethod
    def from_config(cls, camera: dict, image_size: int) -> "PinholeCamera":
        missing = {"pos", "target", "fovy"} - set(camera)
        if missing:
            raise ValueError(f"a camera calibration needs pos, target and fovy; missing {sorted(missing)}")
        return cls(tuple(camera["pos"]), tuple(camera["target"]), float(camera["fovy"]), int(image_size))

    @property
    def rotation(self) -> np.ndarray:
        """(3, 3) rows: the camera's right, up and backward axes in the robot's frame."""
        forward = np.subtract(self.target, self.pos, dtype=float)
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        return np.stack([right, np.cross(right, forward), -forward])

    @property
    def focal(self) -> float:
        """Pixels per unit of tangent."""
        return (self.image_size / 2) / math.tan(math.radians(self.fovy) / 2)

    def project(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) -> (N, 2) continuous pixel coordinates (u right, v down; pixel i spans [i, i + 1))."""
        cam = (np.asarray(points, dtype=float) - self.pos) @ self.rotation.T  # (N, 3) right, up, back
        if (cam[:, 2] >= 0).any():
            raise ValueError("a point lies behind the camera: it has no pixel")
        half, f = self.image_size / 2, self.focal
        return np.stack([half + f * cam[:, 0] / -cam[:, 2], half - f * cam[:, 1] / -cam[:, 2]], axis=1)

    def backproject(self, uv: np.ndarray, z: np.ndarray | float) -> np.ndarray:
        """(N, 2) pixels -> (N, 3) the points seen there on the horizontal plane(s) at height `z`."""
        uv = np.asarray(uv, dtype=float)
        half, f = self.image_size / 2, self.focal
        rays = np.stack([(uv[:, 0] - half) / f, -(uv[:, 1] - half) / f, -np.ones(len(uv))], axis=1)
        rays = rays @ self.rotation  # to the robot's frame
        t = (np.asarray(z, dtype=float) - self.pos[2]) / rays[:, 2]
        return np.asarray(self.pos) + t[:, None] * rays

    def to_unit(self, uv: np.ndarray) -> np.ndarray:
        """Pixels -> [-1, 1] image coordinates (-1 the left / top edge, 1 the right / bottom edge)."""
        return 2 * np.asarray(uv, dtype=float) / self.image_size - 1
