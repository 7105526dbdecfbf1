"""The sim suite's arm as a LeRobot `Robot` that lives in wall-clock time, for running the control
loop (policies.control) without hardware.

Physics advances lazily: every call first steps MuJoCo by the timesteps that elapsed on the clock
since the last call (50 Hz physics), so a slow caller sees the world move on without it, as a real
robot would. Actions are end-effector deltas per control tick (the policy's 5 Hz deltas, divided
by the runtime across its ticks) plus an absolute gripper command; they move the hand target at once.

    observation: x.pos .. yaw.pos (m, rad), gripper.pos in [0, 1], image (H, W, 3) uint8, and with
                 `privileged` the object poses env.src_x .. env.tgt_yaw (for the scripted expert)
    action:      x.delta .. yaw.delta (m, rad per tick), gripper.pos in [0, 1] (1 = closed)
"""

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lerobot.robots import Robot, RobotConfig

from sim.env import ACTION_HIGH, ACTION_LOW, TabletopEnv
from sim.tasks import PROTOCOLS, get_task

STATE_NAMES = ("x", "y", "z", "roll", "pitch", "yaw")
CAMERA = "image"
ENV_STATE_NAMES = tuple(f"env.{o}_{q}" for o in ("src", "tgt") for q in ("x", "y", "z", "yaw"))


@RobotConfig.register_subclass("mujoco_tabletop")
@dataclass(kw_only=True)
class MujocoRobotConfig(RobotConfig):
    task: str = "spoon_on_towel"
    protocol: str = "visual_matching"
    image_size: int = 64
    seed: int = 0  # the scene of the first episode; reset(seed) draws another
    privileged: bool = False  # also observe the object poses (env.*), as the scripted expert needs
    # LeRobot's Robot keeps calibration files; a simulated arm has none, so keep them out of $HOME.
    calibration_dir: Path | None = Path(tempfile.gettempdir()) / "vidbot_calibration"

    def __post_init__(self):
        super().__post_init__()
        get_task(self.task)  # raises with the known names
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; expected one of {PROTOCOLS}")


class MujocoRobot(Robot):
    """A tabletop task's WidowX-like arm advancing in (wall-)clock time; `clock` is injectable for tests."""

    config_class = MujocoRobotConfig
    name = "mujoco_tabletop"

    def __init__(self, config: MujocoRobotConfig, clock: Callable[[], float] = time.perf_counter):
        super().__init__(config)
        self.config = config
        self.clock = clock
        self.env: TabletopEnv | None = None
        self._t0 = 0.0
        self._steps_done = 0

    # ---- features -----------------------------------------------------------------------------
    @property
    def observation_features(self) -> dict:
        s = self.config.image_size
        features = {**{f"{n}.pos": float for n in STATE_NAMES}, "gripper.pos": float, CAMERA: (s, s, 3)}
        if self.config.privileged:
            features |= dict.fromkeys(ENV_STATE_NAMES, float)
        return features

    @property
    def action_features(self) -> dict:
        return {**{f"{n}.delta": float for n in STATE_NAMES}, "gripper.pos": float}

    @property
    def instruction(self) -> str:
        return get_task(self.config.task).instruction

    # ---- connection ---------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self.env is not None

    def connect(self, calibrate: bool = True) -> None:
        if self.is_connected:
            raise RuntimeError(f"{self} is already connected")
        c = self.config
        self.env = TabletopEnv(c.task, c.protocol, image_size=c.image_size)
        self.reset(c.seed)

    @property
    def is_calibrated(self) -> bool:
        return True

    def calibrate(self) -> None:
        pass

    def configure(self) -> None:
        pass

    def disconnect(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

    # ---- episodes (simulation only) -------------------------------------------------------------
    def reset(self, seed: int) -> None:
        """A new scene drawn from `seed` (the same scene sim.evaluate gets for that seed); time restarts."""
        self._require_connected()
        self.env.reset(seed=seed)
        self._t0, self._steps_done = self.clock(), 0

    def info(self) -> dict:
        """is_success / grasped as the env judges them now (SIMPLER judges success at the episode's end)."""
        self._require_connected()
        self._advance()
        return self.env.info()

    # ---- I/O ----------------------------------------------------------------------------------
    def get_observation(self) -> dict:
        self._require_connected()
        self._advance()
        self.env.info()  # keeps the episode's "grasped" flag current, as env.step does every step
        obs = self.env.observation()
        state = obs["agent_pos"]
        out = {f"{n}.pos": float(state[i]) for i, n in enumerate(STATE_NAMES)}
        out["gripper.pos"] = float(state[6])
        out[CAMERA] = obs["pixels"]["image"]
        if self.config.privileged:
            out |= dict(zip(ENV_STATE_NAMES, obs["environment_state"].tolist(), strict=True))
        return out

    def send_action(self, action: dict) -> dict:
        self._require_connected()
        missing = [k for k in self.action_features if k not in action]
        if missing:
            raise KeyError(f"action lacks {missing}; expected keys {list(self.action_features)}")
        vector = np.array([float(action[k]) for k in self.action_features])
        if not np.all(np.isfinite(vector)):
            raise ValueError(
                f"action must be finite, got {dict(zip(self.action_features, vector, strict=True))}"
            )
        self._advance()  # the previous target held until now
        # The env's 5 Hz action box: at 20-50 Hz a backstop against wild values only; the control
        # loop's safety filter holds the per-tick limits.
        sent = np.clip(vector, ACTION_LOW, ACTION_HIGH)
        self.env.command(sent)
        return dict(zip(self.action_features, sent.tolist(), strict=True))

    def _advance(self) -> None:
        """Step the physics up to the clock: the timesteps elapsed since connect/reset, not yet simulated."""
        due = int((self.clock() - self._t0) / self.env.model.opt.timestep)
        self.env.simulate(due - self._steps_done)
        self._steps_done = max(due, self._steps_done)

    def _require_connected(self) -> None:
        if self.env is None:
            raise RuntimeError(f"{self} is not connected: call connect() first")
