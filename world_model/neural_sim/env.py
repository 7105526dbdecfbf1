"""The neural simulator as a gymnasium env with the tabletop suite's interface, so the evaluation harness
runs on it unchanged (`task.suite=world_model.neural_sim.env:NeuralTabletopEnv`):

    python -m sim.evaluate task.suite=world_model.neural_sim.env:NeuralTabletopEnv eval.policies=[scripted]

`reset(seed)` draws the same scene as the MuJoCo env for that seed and starts from its real first frame,
robot state and object poses. `step(action)` asks the state model for the next robot state and object
poses (`agent_pos` and the privileged `environment_state` the scripted experts read), the video model
for the frame that shows them, and the judge for `info["is_success"]` / `grasped` on the new state.
Episodes are rolled out autoregressively for the task's horizon (60-120 steps), past the 16 state steps
the model was trained to unroll (a warp video model also past its 2 frame steps; a renderer draws each
frame from the first one and the state): how far they stay faithful is what `make bench-neural-sim`
measures (PSNR and state errors by horizon).
Actions outside the training range are clipped, with a warning. The checkpoint is read from
`$NEURAL_SIM_CHECKPOINT` (default outputs/neural_sim), since the harness builds envs by suite name only.
"""

import os

import gymnasium as gym
import numpy as np
import torch

from sim.env import TabletopEnv
from world_model.neural_sim.model import STATE_DIM
from world_model.neural_sim.simulator import NeuralSim, load_neural_sim

CHECKPOINT_ENV = "NEURAL_SIM_CHECKPOINT"
DEFAULT_CHECKPOINT = "outputs/neural_sim"
_LOADED: dict[str, NeuralSim] = {}


def shared_neural_sim(path: str) -> NeuralSim:
    """One loaded simulator per checkpoint and process, shared by that process's envs."""
    if path not in _LOADED:
        _LOADED[path] = load_neural_sim(path)
    return _LOADED[path]


class NeuralTabletopEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}

    def __init__(
        self,
        task: str = "stack_block",
        protocol: str = "visual_matching",
        image_size: int = 64,
        checkpoint: str | None = None,
        max_episode_steps: int | None = None,
        render_mode: str = "rgb_array",
        **_ignored,  # the tabletop's robot / control_hz
    ):
        torch.set_num_threads(1)  # one env per worker process; the harness runs several
        self.real = TabletopEnv(task, protocol, image_size=image_size)  # first frames and the scene
        self.sim = shared_neural_sim(checkpoint or os.environ.get(CHECKPOINT_ENV, DEFAULT_CHECKPOINT))
        self.task_description = self.real.task_description
        self.max_episode_steps = max_episode_steps or self.real.max_episode_steps
        self._max_episode_steps = self.max_episode_steps
        self.observation_space = self.real.observation_space
        self.action_space = self.real.action_space
        self.render_mode = render_mode
        self._context = self._frame = self._world = self._last_action = None
        self._ever_grasped, self._steps = False, 0

    @property
    def protocol(self) -> str:
        return self.real.protocol

    @protocol.setter
    def protocol(self, value: str) -> None:  # the harness switches protocols between waves
        self.real.protocol = value

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        obs, _ = self.real.reset(seed=seed)
        frame = torch.from_numpy(obs["pixels"]["image"]).permute(2, 0, 1)[None].float() / 255
        self._world = torch.from_numpy(np.concatenate([obs["agent_pos"], obs["environment_state"]]))[None]
        self._frame, self._context = frame, self.sim.start(frame, self._world)
        self._last_action = torch.zeros(1, *self.action_space.shape)
        self._ever_grasped, self._steps = False, 0
        return obs, {"is_success": False, "grasped": False, "grasped_now": False}

    def step(self, action):
        action = torch.as_tensor(np.asarray(action, dtype=np.float32))[None]
        if action.shape != (1, *self.action_space.shape):
            raise ValueError(f"actions are {self.action_space.shape}, got {tuple(action.shape[1:])}")
        action = self.sim.clip_action(action)
        self._frame, self._world, self._context = self.sim.step(
            self._context, self._world, action, self._last_action
        )
        self._last_action = action
        verdict = self.sim.judge_state(self._world)
        grasped_now = bool(verdict["grasp"][0] > 0.5)
        self._ever_grasped |= grasped_now
        self._steps += 1
        info = {
            "is_success": bool(verdict["success"][0] > 0.5),
            "grasped": self._ever_grasped,
            "grasped_now": grasped_now,
        }
        obs = {
            "pixels": {"image": self.render()},
            "agent_pos": self._world[0, :STATE_DIM].numpy().astype(np.float32),
            "environment_state": self._world[0, STATE_DIM:].numpy().astype(np.float32),
            "task": self.task_description,
        }
        return obs, float(info["is_success"]), False, self._steps >= self.max_episode_steps, info

    def render(self) -> np.ndarray:
        return (self._frame[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    def close(self) -> None:
        self.real.close()
