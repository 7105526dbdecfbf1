"""Kinematics of the mocap-driven end effector and the visual WidowX-like arm."""

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
    return np.array([
        cr * cp * cy + sr * sp * sy,
        sr * cp * cy - cr * sp * sy,
        cr * sp * cy + sr * cp * sy,
        cr * cp * sy - sr * sp * cy,
    ])


def mat_to_euler(m: np.ndarray) -> np.ndarray:
    """Rotation matrix -> extrinsic x-y-z Euler angles (roll, pitch, yaw); inverse of euler_to_quat."""
    return np.array([np.arctan2(m[2, 1], m[2, 2]), -np.arcsin(np.clip(m[2, 0], -1, 1)), np.arctan2(m[1, 0], m[0, 0])])


def quat_to_mat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def mat_to_quat(m: np.ndarray) -> np.ndarray:
    """Rotation matrix -> quaternion (w, x, y, z), w >= 0 (Shepperd's method)."""
    t = np.trace(m)
    if t > 0:
        s = 2 * np.sqrt(1 + t)
        q = [s / 4, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2 * np.sqrt(1 + m[i, i] - m[j, j] - m[k, k])
        q = np.empty(4)
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = s / 4
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    q = np.asarray(q)
    return q if q[0] >= 0 else -q


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # np.cross costs ~20 us on 3-vectors; this runs several times per env step.
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def segment_pose(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and orientation of a capsule whose z axis runs from point a to point b."""
    z = b - a
    z = z / max(np.linalg.norm(z), 1e-9)
    helper = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = _cross(helper, z)
    x /= np.linalg.norm(x)
    y = _cross(z, x)
    return (a + b) / 2, mat_to_quat(np.stack([x, y, z], axis=1))


def arm_points(hand_pos: np.ndarray, hand_quat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Elbow and wrist positions of a 2-link arm from the shoulder to the hand (elbow up).

    Out-of-reach targets stretch the arm straight toward them: the arm is only drawn.
    """
    wrist = hand_pos + quat_to_mat(hand_quat)[:, 2] * WRIST_OFFSET
    d = wrist - SHOULDER
    dist = np.clip(np.linalg.norm(d), 1e-6, UPPER_ARM + FOREARM - 1e-6)
    u = d / max(np.linalg.norm(d), 1e-9)
    # Elbow lies in the vertical plane through the shoulder and the wrist, above the line between them.
    along = (UPPER_ARM**2 - FOREARM**2 + dist**2) / (2 * dist)
    height = np.sqrt(max(UPPER_ARM**2 - along**2, 0.0))
    horizontal = np.array([u[0], u[1], 0.0])
    up = np.array([0.0, 0.0, 1.0]) - u * u[2]  # component of world-up normal to the segment
    up = up / max(np.linalg.norm(up), 1e-9) if np.linalg.norm(horizontal) > 1e-6 else np.array([1.0, 0, 0])
    elbow = SHOULDER + u * along + up * height
    return elbow, wrist, SHOULDER
