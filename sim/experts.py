"""Scripted experts (privileged state machines) and a random policy, behind LeRobot's policy contract.

`ExpertController` drives one env from its agent_pos and environment_state; `ScriptedPolicy` batches
controllers behind `reset()` / `select_action(batch)` so the harness runs it like a learned policy.
"""

import copy
from dataclasses import dataclass, field
from enum import IntEnum
from types import SimpleNamespace

import numpy as np
import torch

from sim.env import ACTION_HIGH, ACTION_LOW, HAND_HIGH, HAND_LOW, RPY_HIGH, RPY_LOW
from sim.tasks import TaskSpec, get_task

STATE_KEY = "observation.state"
ENV_STATE_KEY = "observation.environment_state"


class Phase(IntEnum):
    APPROACH = 0
    DESCEND = 1
    CLOSE = 2
    LIFT = 3
    CARRY = 4
    LOWER = 5
    RELEASE = 6
    RETREAT = 7


def wrap_yaw(yaw: float, period: float) -> float:
    """The yaw equivalent to `yaw` under a symmetry of `period`, in [-period/2, period/2)."""
    return (yaw + period / 2) % period - period / 2


@dataclass
class ExpertController:
    """Pick-and-place state machine. `noise` > 0 perturbs the executed actions for diverse demos.

    `act` returns the executed (noisy) action and keeps the clean one it meant in `intended`: demos
    record that as the label (DART), which is a function of the observation and the phase. With
    `episode_jitter` the expert also draws a hidden per-episode gain and waypoint offset when noisy
    (noisy experts of different quality for the benchmarks); demos turn it off, since nothing the
    policy observes reveals it.
    """

    task: TaskSpec
    noise: float = 0.0
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    hover: float = 0.09  # approach height above the grasp point (m)
    gain: float = 1.0
    align_yaw: bool = True  # turn to the object's yaw before grasping; off shows that the grasp needs it
    episode_jitter: bool = True  # hidden per-episode gain and waypoint offset when noise > 0
    # Held open at the grasp pose before closing, so that an open-loop chunk that arrives a step late
    # still closes at the pose (calibration step I: state_fm's grasps 96% -> 99%).
    settle_steps: int = 2

    def __post_init__(self):
        self.reset()

    def reset(self) -> None:
        self.phase = Phase.APPROACH
        self.timer = 0
        self.carry_z = 0.19 if self.task.align_to_target else 0.14
        self.intended = np.zeros(7, dtype=np.float32)
        # Per-episode waypoint jitter: small enough that the grasp and the placement still succeed.
        jitter = self.noise > 0 and self.episode_jitter
        self.offset = self.rng.normal(0, 0.004, 3) * jitter
        self.gain_ep = self.gain * (1 + self.rng.uniform(-0.3, 0.0) * jitter)

    def _grasp_yaw(self, src_yaw: float) -> float:
        if not self.align_yaw:
            return 0.0
        return wrap_yaw(src_yaw, np.pi / 2 if self.task.symmetric_grasp else np.pi)

    def act(self, agent_pos: np.ndarray, env_state: np.ndarray) -> np.ndarray:
        hand, yaw, closure = agent_pos[:3], agent_pos[5], agent_pos[6]
        src, src_yaw, tgt, tgt_yaw = env_state[:3], env_state[3], env_state[4:7], env_state[7]
        # Hand 2 cm above the object's centre: the 5 cm fingers then pinch its middle.
        grasp = src + np.array([0, 0, 0.02]) + self.offset
        hold_yaw = self._grasp_yaw(src_yaw)
        grip = 1.0 if Phase.CLOSE <= self.phase <= Phase.LOWER else 0.0
        goal, goal_yaw = hand.copy(), yaw

        if self.phase == Phase.APPROACH:
            goal, goal_yaw = grasp + [0, 0, self.hover], hold_yaw
            if np.linalg.norm(hand[:2] - goal[:2]) < 0.012 and abs(yaw - goal_yaw) < 0.06:
                self.phase = Phase.DESCEND
        elif self.phase == Phase.DESCEND:
            goal, goal_yaw = grasp, hold_yaw
            if hand[2] - grasp[2] < 0.006 or hand[2] < 0.06:
                self.phase, self.timer = Phase.CLOSE, 0
        elif self.phase == Phase.CLOSE:
            self.timer += 1
            goal, goal_yaw = grasp, hold_yaw
            grip = 1.0 if self.timer > self.settle_steps else 0.0
            if self.timer >= self.settle_steps + 3:
                self.phase = Phase.LIFT
        elif self.phase in (Phase.LIFT, Phase.CARRY, Phase.LOWER) and not self._holding(hand, src, closure):
            self.phase, grip = Phase.APPROACH, 0.0  # dropped or missed: open and try again
        elif self.phase == Phase.LIFT:
            goal = np.array([hand[0], hand[1], self.carry_z])
            if hand[2] > self.carry_z - 0.015:
                self.phase = Phase.CARRY
        elif self.phase == Phase.CARRY:
            goal = np.array([tgt[0], tgt[1], self.carry_z]) + self.offset * [1, 1, 0]
            if self.task.align_to_target:
                goal_yaw = wrap_yaw(tgt_yaw, np.pi)
            if np.linalg.norm(hand[:2] - goal[:2]) < 0.012 and abs(yaw - goal_yaw) < 0.08:
                self.phase = Phase.LOWER
        elif self.phase == Phase.LOWER:
            goal = np.array([tgt[0], tgt[1], tgt[2] + self.task.release_dz + 0.02]) + self.offset * [1, 1, 0]
            goal_yaw = wrap_yaw(tgt_yaw, np.pi) if self.task.align_to_target else yaw
            if hand[2] - goal[2] < 0.006:
                self.phase, self.timer = Phase.RELEASE, 0
        elif self.phase == Phase.RELEASE:
            self.timer += 1
            if self.timer >= 2:
                self.phase = Phase.RETREAT
        else:  # RETREAT
            goal = np.array([hand[0], hand[1], max(hand[2], 0.2)])

        action = np.zeros(7, dtype=np.float32)
        action[:3] = self.gain_ep * (goal - hand)
        action[5] = goal_yaw - yaw
        action[6] = grip
        self.intended = np.clip(action, ACTION_LOW, ACTION_HIGH)
        if self.noise > 0:
            action[:3] += self.rng.normal(0, self.noise, 3)
            action[5] += self.rng.normal(0, self.noise * 4)
        return np.clip(action, ACTION_LOW, ACTION_HIGH)

    @staticmethod
    def _holding(hand: np.ndarray, src: np.ndarray, closure: float) -> bool:
        """The object is still between the fingers (the fingers did not close on nothing)."""
        return closure < 0.97 and np.linalg.norm(hand - (src + [0, 0, 0.02])) < 0.05


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class ScriptedPolicy:
    """Batched scripted expert with LeRobot's `reset` / `select_action` contract (privileged state)."""

    name = "scripted"

    def __init__(
        self,
        task: str,
        noise: float = 0.0,
        seed: int = 0,
        align_yaw: bool = True,
        pose_noise: float = 0.0,
        yaw_noise: float = 0.0,
    ):
        """`pose_noise` (m) and `yaw_noise` (rad): the standard deviation of an error in where the expert
        believes the objects are (x, y of source and target) and how they are turned, drawn once per
        episode: the expert as an image policy that localizes that well (the localization a task needs)."""
        self.task, self.noise, self.align_yaw = get_task(task), noise, align_yaw
        self.pose_noise, self.yaw_noise = pose_noise, yaw_noise
        self.rng = np.random.default_rng(seed)
        self.controllers: list[ExpertController] = []
        self.belief_errors: list[np.ndarray] = []

    def reset(self) -> None:
        self.controllers, self.belief_errors = [], []

    def _belief_error(self) -> np.ndarray:
        """(8,) added to the environment state: source x, y, yaw and target x, y, yaw (never z)."""
        error = np.zeros(8)
        error[[0, 1, 4, 5]] = self.rng.normal(0, self.pose_noise, 4) if self.pose_noise else 0
        error[[3, 7]] = self.rng.normal(0, self.yaw_noise, 2) if self.yaw_noise else 0
        return error

    def select_action(self, batch: dict) -> torch.Tensor:
        if ENV_STATE_KEY not in batch:
            raise KeyError(
                f"the scripted expert needs {ENV_STATE_KEY!r} in the batch; got keys {sorted(batch)}"
            )
        state, env_state = _to_numpy(batch[STATE_KEY]), _to_numpy(batch[ENV_STATE_KEY])
        while len(self.belief_errors) < len(state):
            self.belief_errors.append(self._belief_error())
        env_state = env_state + np.stack(self.belief_errors[: len(state)]).astype(env_state.dtype)
        while len(self.controllers) < len(state):
            self.controllers.append(
                ExpertController(
                    self.task,
                    self.noise,
                    np.random.default_rng(self.rng.integers(2**31)),
                    align_yaw=self.align_yaw,
                )
            )
        actions = [
            c.act(s, e) for c, s, e in zip(self.controllers[: len(state)], state, env_state, strict=True)
        ]
        return torch.from_numpy(np.stack(actions))


class ChunkedExpertPolicy:
    """The scripted expert planning open-loop chunks, so chunked execution (the real-time loop, or
    replanning every n steps) can be measured with a policy that succeeds.

    A chunk is the expert's state machine rolled out for `chunk_size` steps on a kinematic model of the
    arm from the observed state: the hand goes where the action says, the gripper closes on the source
    object when it is between the fingers, and a held object moves with the hand. The machine's state
    after `n_action_steps` steps is kept for the next chunk, which starts from the observed state again.
    """

    name = "scripted_chunks"

    def __init__(self, task: str, chunk_size: int = 14, n_action_steps: int = 7, seed: int = 0):
        from lerobot.configs import FeatureType, PolicyFeature

        if not 1 <= n_action_steps <= chunk_size:
            raise ValueError(f"n_action_steps must be in 1..chunk_size={chunk_size}, got {n_action_steps}")
        self.task = get_task(task)
        self.rng = np.random.default_rng(seed)
        self.config = SimpleNamespace(
            input_features={
                "observation.images.image": PolicyFeature(FeatureType.VISUAL, (3, 64, 64)),
                STATE_KEY: PolicyFeature(FeatureType.STATE, (7,)),
                ENV_STATE_KEY: PolicyFeature(FeatureType.ENV, (8,)),
            },
            output_features={"action": PolicyFeature(FeatureType.ACTION, (7,))},
            chunk_size=chunk_size,
            n_action_steps=n_action_steps,
            n_obs_steps=1,
        )
        self.reset()

    def reset(self) -> None:
        self.controller: ExpertController | None = None
        self._queue: list[np.ndarray] = []

    def predict_action_chunk(self, batch: dict) -> torch.Tensor:
        """(1, chunk_size, 7): the expert's actions along its imagined rollout."""
        state, env_state = _to_numpy(batch[STATE_KEY]), _to_numpy(batch[ENV_STATE_KEY])
        if len(state) != 1:
            raise ValueError(f"the chunked expert plans one episode at a time, got a batch of {len(state)}")
        if self.controller is None:
            self.controller = ExpertController(self.task, rng=np.random.default_rng(self.rng.integers(2**31)))
        controller = copy.deepcopy(self.controller)
        state, env_state = state[0].astype(np.float64), env_state[0].astype(np.float64)
        actions = []
        for step in range(self.config.chunk_size):
            action = controller.act(state, env_state)
            actions.append(action)
            state, env_state = self._imagine(state, env_state, action)
            if step + 1 == self.config.n_action_steps:
                self.controller = copy.deepcopy(controller)  # where the next chunk's rollout resumes
        return torch.from_numpy(np.stack(actions)[None].astype(np.float32))

    def _imagine(self, state: np.ndarray, env_state: np.ndarray, action: np.ndarray):
        """One step of the kinematic model: (agent_pos, environment_state) after `action`."""
        state, env_state = state.copy(), env_state.copy()
        hand = np.clip(state[:3] + action[:3], HAND_LOW, HAND_HIGH)
        between_fingers = np.linalg.norm(state[:3] - (env_state[:3] + [0, 0, 0.02])) < 0.03
        closing = action[6] > 0.5
        holding = (
            0.3 < state[6] < 0.97
        )  # closed on something (empty fingers close fully, as the expert checks)
        if closing and (between_fingers or holding):  # closes on the object, or keeps holding it
            state[6] = 0.6
            env_state[:3] += hand - state[:3]
            env_state[3] += action[5]
        else:
            state[6] = 1.0 if closing else 0.0
        state[:3] = hand
        state[3:6] = np.clip(state[3:6] + action[3:6], RPY_LOW, RPY_HIGH)
        return state, env_state

    def select_action(self, batch: dict) -> torch.Tensor:
        """Replans every n_action_steps calls, as a learned chunking policy does under sim.evaluate."""
        if not self._queue:
            chunk = self.predict_action_chunk(batch)[0]
            self._queue = list(chunk[: self.config.n_action_steps])
        return self._queue.pop(0)[None]


class RandomPolicy:
    """Uniform random actions over the action box: the floor of the results table."""

    name = "random"

    def __init__(self, task: str | None = None, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def select_action(self, batch: dict) -> torch.Tensor:
        n = len(_to_numpy(batch[STATE_KEY]))
        return torch.from_numpy(self.rng.uniform(ACTION_LOW, ACTION_HIGH, (n, 7)).astype(np.float32))


@dataclass
class PlayController:
    """Task-free motions for actionless video: wander between waypoints, push an object, wave.

    Waypoints come from the scene (source and target object positions) and the workspace, so the
    motion is varied but stays on the table. `mode` is fixed per episode.
    """

    mode: str = "wander"  # "wander", "push" or "wave"
    rng: np.random.Generator = field(default_factory=np.random.default_rng)

    MODES = ("wander", "push", "wave")

    def __post_init__(self):
        if self.mode not in self.MODES:
            raise ValueError(f"unknown play mode {self.mode!r}; expected one of {self.MODES}")
        self.waypoints: list[np.ndarray] = []
        self.grip = 0.0
        self.pushed = int(self.rng.integers(2))  # push mode: 0 the task's source object, 1 its target

    def _plan(self, env_state: np.ndarray) -> list[np.ndarray]:
        objects = [env_state[:3], env_state[4:7]]
        if self.mode == "push":
            obj = objects[self.pushed]
            direction = self.rng.normal(size=2)
            direction /= np.linalg.norm(direction)
            start = np.array([*(obj[:2] - 0.08 * direction), 0.058])  # fingertips 8 mm above the table
            return [
                start + [0, 0, 0.06],
                start,
                np.array([*(obj[:2] + 0.06 * direction), 0.058]),
                start + [0, 0, 0.1],
            ]
        if self.mode == "wave":
            centre = np.array([self.rng.uniform(0.25, 0.45), 0.0, self.rng.uniform(0.12, 0.2)])
            return [centre + [0, s * self.rng.uniform(0.08, 0.16), 0] for s in (1, -1, 1, -1, 1)]
        points = []
        for _ in range(4):
            if self.rng.random() < 0.5:
                obj = objects[int(self.rng.integers(2))]
                points.append(obj + [*self.rng.normal(0, 0.02, 2), self.rng.uniform(0.06, 0.12)])
            else:
                points.append(
                    np.array(
                        [
                            self.rng.uniform(0.15, 0.5),
                            self.rng.uniform(-0.22, 0.22),
                            self.rng.uniform(0.08, 0.22),
                        ]
                    )
                )
        return points

    def act(self, agent_pos: np.ndarray, env_state: np.ndarray) -> np.ndarray:
        hand = agent_pos[:3]
        if not self.waypoints:
            self.waypoints = self._plan(env_state)
        goal = self.waypoints[0]
        if np.linalg.norm(goal - hand) < 0.015:
            self.waypoints.pop(0)
            if self.mode == "wander" and self.rng.random() < 0.4:
                self.grip = 1.0 - self.grip
        action = np.zeros(7, dtype=np.float32)
        action[:3] = goal - hand
        action[5] = self.rng.normal(0, 0.05) if self.mode == "wander" else 0.0
        action[6] = self.grip if self.mode == "wander" else 0.0
        return np.clip(action, ACTION_LOW, ACTION_HIGH)
