"""Kinematics of the mocap-driven end effector and the visual WidowX-like arm."""

import math

import mujoco
import numpy as np

# Shoulder of the visual arm and its two link lengths (m); the arm is drawn, not simulated.
SHOULDER = np.array([-0.05, 0.0, 0.12])
UPPER_ARM = 0.36
FOREARM = 0.36
WRIST_OFFSET = 0.08  # from the gripper frame up to the wrist joint, along the gripper's z axis


def euler_to_quat(rpy: np.ndarray) -> np.ndarray:
    """Extrinsic x-y-z Euler angles (roll, pitch, yaw) -> MuJoCo quaternion (w, x, y, z)."""
    r, p, y = np.asarray(rpy, dtype=np.float64) / 2
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    return np.array(
        [
            cr * cp * cy + sr * sp * sy,
            sr * cp * cy - cr * sp * sy,
            cr * sp * cy + sr * cp * sy,
            cr * cp * sy - sr * sp * cy,
        ]
    )


def mat_to_euler(m: np.ndarray) -> np.ndarray:
    """Rotation matrix -> extrinsic x-y-z Euler angles (roll, pitch, yaw); inverse of euler_to_quat."""
    return np.array(
        [np.arctan2(m[2, 1], m[2, 2]), -np.arcsin(np.clip(m[2, 0], -1, 1)), np.arctan2(m[1, 0], m[0, 0])]
    )


def segment_pose(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and orientation of a capsule whose z axis runs from point a to point b."""
    quat = np.empty(4)
    mujoco.mju_quatZ2Vec(quat, b - a)  # one C call: this runs for every link at every env step
    return (a + b) / 2, quat


def arm_points(hand_pos: np.ndarray, hand_rot: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Elbow and wrist positions of a 2-link arm from the shoulder to the hand (elbow up).

    Out-of-reach targets stretch the arm straight toward them: the arm is only drawn.
    """
    wrist = hand_pos + hand_rot[:, 2] * WRIST_OFFSET
    d = wrist - SHOULDER
    norm = max(math.sqrt(d @ d), 1e-9)
    dist = min(max(norm, 1e-6), UPPER_ARM + FOREARM - 1e-6)
    u = d / norm
    # Elbow lies in the vertical plane through the shoulder and the wrist, above the line between them.
    along = (UPPER_ARM**2 - FOREARM**2 + dist**2) / (2 * dist)
    height = np.sqrt(max(UPPER_ARM**2 - along**2, 0.0))
    up = np.array([0.0, 0.0, 1.0]) - u * u[2]  # component of world-up normal to the segment
    up_norm = math.sqrt(up @ up)
    up = up / up_norm if up_norm > 1e-6 else np.array([1.0, 0.0, 0.0])
    elbow = SHOULDER + u * along + up * height
    return elbow, wrist, SHOULDER
