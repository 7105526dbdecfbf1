"""Gymnasium env for the tabletop tasks: end-effector delta control at 5 Hz, SIMPLER-style judging.

Observation (dict):
    pixels.image        (H, W, 3) uint8, the front camera
    agent_pos           (7,) float32: hand x, y, z (m), roll, pitch, yaw (rad), gripper closure in [0, 1]
    environment_state   (8,) float32: source x, y, z, yaw, target x, y, z, yaw (privileged; experts use it)
    task                the instruction string
Action (7,): dx, dy, dz (m), droll, dpitch, dyaw (rad), gripper closure command in [0, 1] (1 = closed).
info: is_success (object on target and released; SIMPLER judges it at the last step), grasped (both
fingers touched the source object at some step so far), grasped_now, close_to_source / close_to_target
(the hand's x-y distance in metres to each object when the gripper was first commanded closed; nan
before: where a policy tried to grasp, which tells "went to the wrong object" from "missed by a little").
"""

import atexit
import os
import string
import weakref

import gymnasium as gym
import mujoco
import numpy as np

from sim import robot as kin
from sim.scene import (
    FINGER_LENGTH,
    FINGER_SQUEEZE,
    FINGER_TRAVEL,
    OBJECT_HALF_HEIGHT,
    OBJECT_RADIUS,
    TABLE_MATERIALS,
    SceneSpec,
    build_scene_xml,
    look_at_xyaxes,
)
from sim.tasks import PROTOCOLS, get_task

ACTION_LOW = np.array([-0.05, -0.05, -0.05, -0.3, -0.3, -0.3, 0.0], dtype=np.float32)
ACTION_HIGH = -ACTION_LOW + np.array([0, 0, 0, 0, 0, 0, 1], dtype=np.float32)
HAND_LOW = np.array([0.05, -0.32, FINGER_LENGTH + 0.004])  # fingertips stay above the table
HAND_HIGH = np.array([0.62, 0.32, 0.40])
# Hand orientation limits (rad): roll and pitch within 0.5 of pointing down; yaw within [-pi/2, pi/2],
# which covers every grasp since the two-finger gripper is symmetric under a half turn.
RPY_HIGH = np.array([0.5, 0.5, np.pi / 2])
RPY_LOW = -RPY_HIGH
PLACE_LOW, PLACE_HIGH = np.array([0.18, -0.24]), np.array([0.50, 0.24])  # where objects are placed
# Objects are placed at yaws within +-OBJECT_YAW_RANGE (rad) of the table's axes (reports/calibration.md).
OBJECT_YAW_RANGE = np.pi / 4
CAMERA_POS, CAMERA_TARGET = np.array([0.78, 0.0, 0.42]), np.array([0.3, 0.0, 0.0])
# Variant aggregation moves the camera: each position and look-at coordinate by up to +-pos / +-target
# metres, the vertical field of view by up to +-fovy degrees (uniform).
CAMERA_JITTER = {"pos": 0.04, "target": 0.03, "fovy": 3.0}
DISTRACTOR_POOL = ("spoon", "carrot", "green_block", "eggplant", "red_ball", "cyan_can", "pink_cup", "plate")
# What variant aggregation varies; `variant_factors` keeps a subset (the rest at the nominal scene) to tell
# which of them costs a policy its success. Each factor's random draws are made either way, so a scene
# with a factor off is the full variant scene with only that factor reset.
VARIANT_FACTORS = ("lighting", "table", "backdrop", "camera", "distractors")
INSTRUCTION_CHARSET = string.ascii_letters + string.digits + " .,'-"
SUBSTEP_CHUNKS = 2  # the hand target is interpolated in this many pieces within one control step


_OPEN_ENVS: "weakref.WeakSet[TabletopEnv]" = weakref.WeakSet()
_exit_hook_registered = False


def _close_at_exit(env: "TabletopEnv") -> None:
    """Close `env`'s renderer at exit if nobody did. The hook is registered after mujoco's own EGL
    teardown hook (the first Renderer imports mujoco.egl), so it runs while EGL is still up."""
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(lambda: [e.close() for e in list(_OPEN_ENVS)])
        _exit_hook_registered = True
    _OPEN_ENVS.add(env)


class TabletopEnv(gym.Env):
    """One task of the suite.

    Args:
        task: a name from sim.tasks.TASKS.
        protocol: "visual_matching" (the nominal scene) or "variant_aggregation" (appearance and
            distractors drawn from the reset seed). May be changed between resets.
        image_size: camera resolution (square).
        robot: "widowx" (the arm) or "hand" (the second embodiment, for actionless video).
        max_episode_steps: horizon; the task's own (60, or 120 for the eggplant) by default.
        control_hz: control rate; physics runs at 50 Hz underneath.
        variant_factors: what variant aggregation varies (a subset of VARIANT_FACTORS; all by default);
            the others stay nominal. Visual matching ignores it.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}

    def __init__(
        self,
        task: str = "spoon_on_towel",
        protocol: str = "visual_matching",
        image_size: int = 64,
        robot: str = "widowx",
        max_episode_steps: int | None = None,
        render_mode: str = "rgb_array",
        control_hz: float = 5.0,
        variant_factors: tuple[str, ...] | list[str] = VARIANT_FACTORS,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
        if render_mode != "rgb_array":
            raise ValueError(f"render_mode must be 'rgb_array', got {render_mode!r}")
        if not isinstance(image_size, int) or image_size < 16 or image_size % 2:
            raise ValueError(f"image_size must be an even int >= 16 (H.264 videos), got {image_size!r}")
        if not 0 < control_hz <= 25:
            raise ValueError(f"control_hz must be in (0, 25] (physics runs at 50 Hz), got {control_hz!r}")
        unknown = sorted(set(variant_factors) - set(VARIANT_FACTORS))
        if unknown:
            raise ValueError(f"unknown variant_factors {unknown}; expected a subset of {VARIANT_FACTORS}")
        self.variant_factors = frozenset(variant_factors)
        self.spec_task = get_task(task)
        self.task_description = self.spec_task.instruction
        self.protocol = protocol
        self.robot = robot
        self.image_size = image_size
        self.render_mode = render_mode
        self.max_episode_steps = max_episode_steps or self.spec_task.max_steps
        self._max_episode_steps = self.max_episode_steps  # where lerobot-eval's rollout reads the horizon

        # Compile only this task's objects and its possible distractors: parked bodies still cost time.
        self._objects = (self.spec_task.source, self.spec_task.target) + tuple(
            n for n in DISTRACTOR_POOL if n not in (self.spec_task.source, self.spec_task.target)
        )
        scene = SceneSpec(robot=robot, image_size=image_size, objects=self._objects)
        self.model = mujoco.MjModel.from_xml_string(build_scene_xml(scene))
        self.data = mujoco.MjData(self.model)
        self._substeps = round(1.0 / (control_hz * self.model.opt.timestep))
        # Physics substeps at which the hand target is moved, spread evenly over the control step.
        self._chunk_ends = [round(k * self._substeps / SUBSTEP_CHUNKS) for k in range(SUBSTEP_CHUNKS + 1)]
        self.metadata = {**self.metadata, "render_fps": control_hz}
        self._renderer = None  # created on first reset, so vector-env workers don't inherit a GL context
        self._index_model()
        self._nominal = self._appearance()

        s = image_size
        self.observation_space = gym.spaces.Dict(
            {
                "pixels": gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (s, s, 3), np.uint8)}),
                "agent_pos": gym.spaces.Box(-4.0, 4.0, (7,), np.float32),  # metres and radians
                "environment_state": gym.spaces.Box(-10.0, 10.0, (8,), np.float32),
                "task": gym.spaces.Text(max_length=128, min_length=1, charset=INSTRUCTION_CHARSET),
            }
        )
        self.action_space = gym.spaces.Box(ACTION_LOW, ACTION_HIGH, dtype=np.float32)

    # ---- model bookkeeping -------------------------------------------------------------------
    def _index_model(self) -> None:
        m = self.model
        body = lambda name: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, name)  # noqa: E731
        self._hand_mocap = m.body_mocapid[body("hand_target")]
        self._hand_body = body("hand")
        self._hand_qpos = m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, "hand")]
        self._arm_mocap = {
            name: m.body_mocapid[body(name)]
            for name in ("upper_arm", "forearm", "wrist_link")
            if body(name) >= 0
        }
        self._src_body, self._tgt_body = body(self.spec_task.source), body(self.spec_task.target)
        geoms_of = lambda b: np.flatnonzero(m.geom_bodyid == b)  # noqa: E731
        self._geom_role = np.zeros(m.ngeom, dtype=np.int64)
        self._geom_role[geoms_of(self._src_body)] = 1
        self._geom_role[geoms_of(body("finger_left"))] = 2
        self._geom_role[geoms_of(body("finger_right"))] = 3
        self._obj_qpos = {
            n: m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n)] for n in self._objects
        }
        self._finger_qpos = m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, "finger_left")]
        self._table_geom = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "table")
        self._backdrop_mat = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_MATERIAL, "backdrop")
        self._table_mats = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_MATERIAL, n) for n in TABLE_MATERIALS]
        self._camera = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, "main")

    def _appearance(self) -> dict[str, np.ndarray]:
        m = self.model
        return {
            "light_diffuse": m.light_diffuse.copy(),
            "light_dir": m.light_dir.copy(),
            "mat_rgba": m.mat_rgba.copy(),
            "geom_matid": m.geom_matid.copy(),
            "cam_fovy": m.cam_fovy.copy(),
            "geom_rgba": m.geom_rgba.copy(),
            "geom_contype": m.geom_contype.copy(),
            "geom_conaffinity": m.geom_conaffinity.copy(),
            "body_gravcomp": m.body_gravcomp.copy(),
        }

    # ---- reset ------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        if self._renderer is None:
            try:
                self._renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
            except mujoco.FatalError as e:
                raise RuntimeError(
                    f"offscreen rendering failed (MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}): set MUJOCO_GL=egl "
                    "before anything imports mujoco (importing `sim` first does it)"
                ) from e
            _close_at_exit(self)
        mujoco.mj_resetData(self.model, self.data)
        variant = self.protocol == "variant_aggregation"
        self._apply_appearance(rng if variant else None)
        distractors = int(rng.integers(1, 4)) if variant else 1
        self._place_objects(rng, distractors if "distractors" in self.variant_factors else 1)

        self._hand_pos = np.array([0.25, 0.0, 0.18]) + rng.uniform(-0.02, 0.02, 3)
        self._hand_rpy = np.zeros(3)
        self._set_hand(self._hand_pos, self._hand_rpy)
        self.data.qpos[self._hand_qpos : self._hand_qpos + 3] = self._hand_pos
        self.data.qpos[self._hand_qpos + 3 : self._hand_qpos + 7] = kin.euler_to_quat(self._hand_rpy)
        self.data.ctrl[0] = FINGER_TRAVEL
        self.data.qpos[self._finger_qpos : self._finger_qpos + 2] = FINGER_TRAVEL
        mujoco.mj_forward(self.model, self.data)
        mujoco.mj_step(self.model, self.data, nstep=25)  # let objects settle on the table
        self._sync()
        self._steps = 0
        self._ever_grasped = False
        self._close_offsets = (np.nan, np.nan)
        obs = self._observation()
        return obs, self._info()

    def _apply_appearance(self, rng: np.random.Generator | None) -> None:
        """Nominal scene when rng is None (visual matching), else a random variant."""
        m, nominal = self.model, self._nominal
        m.light_diffuse[:] = nominal["light_diffuse"]
        m.light_dir[:] = nominal["light_dir"]
        m.mat_rgba[:] = nominal["mat_rgba"]
        m.geom_matid[:] = nominal["geom_matid"]
        m.cam_fovy[:] = nominal["cam_fovy"]
        for key in ("geom_rgba", "geom_contype", "geom_conaffinity", "body_gravcomp"):
            getattr(m, key)[:] = nominal[key]
        cam_pos, cam_target = CAMERA_POS.copy(), CAMERA_TARGET.copy()
        if rng is not None:  # every draw is made, in this order, whichever factors apply
            light_scale = rng.uniform(0.5, 1.6) * rng.uniform(0.85, 1.15, 3)
            light_shift = rng.uniform(-0.4, 0.4, 2)
            table_mat = self._table_mats[int(rng.integers(len(self._table_mats)))]
            table_rgb = rng.uniform(0.3, 0.95, 3)
            backdrop_rgb = rng.uniform(0.1, 1.0, 3)
            jitter = CAMERA_JITTER
            cam_shift, target_shift, fovy_shift = (
                rng.uniform(-jitter["pos"], jitter["pos"], 3),
                rng.uniform(-jitter["target"], jitter["target"], 3),
                rng.uniform(-jitter["fovy"], jitter["fovy"]),
            )
            factors = self.variant_factors
            if "lighting" in factors:
                m.light_diffuse[:] *= light_scale
                m.light_dir[0, :2] += light_shift
            if "table" in factors:
                m.geom_matid[self._table_geom] = table_mat
                m.mat_rgba[table_mat, :3] = table_rgb
            if "backdrop" in factors:
                m.mat_rgba[self._backdrop_mat, :3] = backdrop_rgb
            if "camera" in factors:
                cam_pos += cam_shift
                cam_target += target_shift
                m.cam_fovy[self._camera] += fovy_shift
        xy = look_at_xyaxes(cam_pos, cam_target)
        m.cam_pos[self._camera] = cam_pos
        cam_rot = np.stack([xy[:3], xy[3:], np.cross(xy[:3], xy[3:])], axis=1)
        mujoco.mju_mat2Quat(m.cam_quat[self._camera], cam_rot.flatten())

    def _place_objects(self, rng: np.random.Generator, num_distractors: int) -> None:
        """Source, target and distractors at random non-overlapping poses; every other object parked."""
        src, tgt = self.spec_task.source, self.spec_task.target
        pool = [n for n in DISTRACTOR_POOL if n not in (src, tgt)]
        names = [src, tgt] + list(rng.choice(pool, size=num_distractors, replace=False))
        placed: list[tuple[str, np.ndarray]] = []
        for name in names:
            for _ in range(200):
                xy = rng.uniform(PLACE_LOW, PLACE_HIGH)
                if all(np.linalg.norm(xy - p) > OBJECT_RADIUS[name] + OBJECT_RADIUS[o] for o, p in placed):
                    placed.append((name, xy))
                    self._set_object(
                        name,
                        [xy[0], xy[1], OBJECT_HALF_HEIGHT[name] + 0.001],
                        rng.uniform(-OBJECT_YAW_RANGE, OBJECT_YAW_RANGE),
                    )
                    break
            else:  # a crowded table: leave the distractor out
                if name in (src, tgt):
                    raise RuntimeError(f"could not place {name!r} on the table after 200 tries")
        names = [n for n, _ in placed]
        for name in sorted(set(self._objects) - set(names)):
            self._park(name)

    def _park(self, name: str) -> None:
        """Take an object out of the scene: invisible, no contacts, floating (so it costs nothing)."""
        body = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, name)
        geoms = self.model.geom_bodyid == body
        self.model.geom_rgba[geoms, 3] = 0.0  # alpha 0: not rendered
        self.model.geom_contype[geoms] = 0
        self.model.geom_conaffinity[geoms] = 0
        self.model.body_gravcomp[body] = 1.0
        self._set_object(name, [3.0, 0.0, 1.0], 0.0)

    def _set_object(self, name: str, pos, yaw: float) -> None:
        adr = self._obj_qpos[name]
        self.data.qpos[adr : adr + 3] = pos
        self.data.qpos[adr + 3 : adr + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]

    def _set_hand(self, pos: np.ndarray, rpy: np.ndarray) -> None:
        self.data.mocap_pos[self._hand_mocap] = pos
        self.data.mocap_quat[self._hand_mocap] = kin.euler_to_quat(rpy)

    def _sync(self) -> None:
        """Pose the drawn arm on the hand and bring body poses up to date with qpos.

        After mj_step, xpos still holds the poses from before the last integration; observations,
        success tests and rendering all read xpos, so they need this first.
        """
        if self._arm_mocap:
            qpos = self.data.qpos[self._hand_qpos : self._hand_qpos + 7]
            rot = np.empty(9)
            mujoco.mju_quat2Mat(rot, qpos[3:])
            hand = qpos[:3].copy()
            elbow, wrist, shoulder = kin.arm_points(hand, rot.reshape(3, 3))
            for name, (a, b) in {
                "upper_arm": (shoulder, elbow),
                "forearm": (elbow, wrist),
                "wrist_link": (wrist, hand),
            }.items():
                centre, q = kin.segment_pose(a, b)
                self.data.mocap_pos[self._arm_mocap[name]] = centre
                self.data.mocap_quat[self._arm_mocap[name]] = q
        mujoco.mj_kinematics(self.model, self.data)

    # ---- step -------------------------------------------------------------------------------
    def step(self, action):
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (7,):
            raise ValueError(
                f"action must have shape (7,) = [dx, dy, dz, droll, dpitch, dyaw, gripper], got {action.shape}"
            )
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action must be finite, got {action.tolist()}")
        if action[6] >= 0.5 and np.isnan(self._close_offsets[0]):
            self._close_offsets = self._hand_offsets()
        start_pos, start_rpy = self._hand_pos, self._hand_rpy
        self._move_targets(np.clip(action, ACTION_LOW, ACTION_HIGH))
        for k in range(1, SUBSTEP_CHUNKS + 1):
            a = k / SUBSTEP_CHUNKS
            self._set_hand(
                start_pos + a * (self._hand_pos - start_pos), start_rpy + a * (self._hand_rpy - start_rpy)
            )
            mujoco.mj_step(self.model, self.data, nstep=self._chunk_ends[k] - self._chunk_ends[k - 1])
        self._sync()

        self._steps += 1
        info = self._info()
        truncated = self._steps >= self.max_episode_steps
        return self._observation(), float(info["is_success"]), False, truncated, info

    def _move_targets(self, action: np.ndarray) -> None:
        """Move the hand target by the action's deltas (within the workspace) and set the gripper."""
        self._hand_pos = np.clip(self._hand_pos + action[:3], HAND_LOW, HAND_HIGH)
        self._hand_rpy = np.clip(self._hand_rpy + action[3:6], RPY_LOW, RPY_HIGH)
        self.data.ctrl[0] = FINGER_TRAVEL - (FINGER_TRAVEL + FINGER_SQUEEZE) * float(action[6])

    # ---- wall-clock use (sim.realtime): command now, simulate as time passes ---------------------
    def command(self, action: np.ndarray) -> None:
        """Apply an action at once, without stepping: the hand target jumps by its deltas (clipped to
        the action box and the workspace). A caller stepping at 20-50 Hz sends small deltas, so the
        target moves in small steps, as `step` interpolates it within a 5 Hz step."""
        self._move_targets(np.clip(np.asarray(action, dtype=np.float64), ACTION_LOW, ACTION_HIGH))
        self._set_hand(self._hand_pos, self._hand_rpy)

    def simulate(self, nstep: int) -> None:
        """Advance the physics by `nstep` timesteps (model.opt.timestep each) toward the current targets."""
        if nstep > 0:
            mujoco.mj_step(self.model, self.data, nstep=nstep)
            self._sync()

    def observation(self) -> dict:
        return self._observation()

    def info(self) -> dict:
        return self._info()

    # ---- observation and judging ---------------------------------------------------------------
    def _finger_contacts(self) -> tuple[bool, bool]:
        """Whether the left and right fingers touch the source object."""
        n = self.data.ncon
        # Map each geom to its role (0 other, 1 source, 2 left finger, 3 right finger) with one lookup.
        pair = self._geom_role[self.data.contact.geom1[:n]] * 4 + self._geom_role[self.data.contact.geom2[:n]]
        return bool(np.any((pair == 6) | (pair == 9))), bool(np.any((pair == 7) | (pair == 13)))

    def _info(self) -> dict:
        left, right = self._finger_contacts()
        grasped_now = left and right
        self._ever_grasped = self._ever_grasped or grasped_now
        d = self.data
        src_rot = d.xmat[self._src_body].reshape(3, 3)
        tgt_rot = d.xmat[self._tgt_body].reshape(3, 3)
        placed = self.spec_task.is_placed(d.xpos[self._src_body], src_rot, d.xpos[self._tgt_body], tgt_rot)
        released = not (left or right)
        return {
            "is_success": bool(placed and released),
            "grasped": self._ever_grasped,
            "grasped_now": grasped_now,
            "close_to_source": self._close_offsets[0],
            "close_to_target": self._close_offsets[1],
        }

    def _hand_offsets(self) -> tuple[float, float]:
        """The hand's x-y distance (m) to the source and to the target object."""
        hand = self.data.xpos[self._hand_body][:2]
        return tuple(
            float(np.linalg.norm(hand - self.data.xpos[b][:2])) for b in (self._src_body, self._tgt_body)
        )

    def _gripper_closure(self) -> float:
        # The joint limit is soft: a squeezing finger can pass 0 by a hair, hence the clip.
        return float(np.clip(1.0 - self.data.qpos[self._finger_qpos] / FINGER_TRAVEL, 0.0, 1.0))

    def _observation(self) -> dict:
        d = self.data
        yaw = lambda b: np.arctan2(d.xmat[b][3], d.xmat[b][0])  # noqa: E731
        hand_rpy = kin.mat_to_euler(d.xmat[self._hand_body].reshape(3, 3))
        agent_pos = np.concatenate([d.xpos[self._hand_body], hand_rpy, [self._gripper_closure()]])
        env_state = np.concatenate(
            [
                d.xpos[self._src_body],
                [yaw(self._src_body)],
                d.xpos[self._tgt_body],
                [yaw(self._tgt_body)],
            ]
        )
        return {
            "pixels": {"image": self.render()},
            "agent_pos": agent_pos.astype(np.float32),
            "environment_state": env_state.astype(np.float32),
            "task": self.task_description,
        }

    def render(self) -> np.ndarray:
        if self._renderer is None:
            raise RuntimeError("call reset() before render(): the renderer is created on the first reset")
        self._renderer.update_scene(self.data, camera=self._camera)
        return self._renderer.render().copy()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
            _OPEN_ENVS.discard(self)
