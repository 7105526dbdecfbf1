"""Meta-World v3 behind the suite's interface: the same observations, experts and harness as the tabletop.

    python -m policies.pipeline experiment=metaworld          # MT10: data -> latent actions -> ... -> eval
    python -m sim.evaluate task=metaworld_mt10 eval.protocols=[standard] eval.policies=[scripted_metaworld]

`MetaWorldEnv(task)` wraps one Meta-World environment: each reset picks one of the task's 50 training
variations (object and goal positions) from the seed, so seeds name scenes as in the tabletop suite.
Observations are the tabletop's keys: a camera image (`camera`: corner by default, any of CAMERAS),
`agent_pos` (`state`: hand xyz and gripper opening, 4-d, or the whole 39-dim observation) and, as
privileged `environment_state`, Meta-World's 39-dim state vector (what its scripted policies read).
Any Meta-World v3 task with a scripted policy runs, not only MT10. `info["is_success"]` is Meta-World's own success flag, latched: Meta-World counts an episode as
solved once the flag is raised (its evaluations stop there), and the harness reads the last step. Frames come from our own offscreen
renderer, sized to the image, without shadows or reflections, and created on the first reset.
"""

import gymnasium as gym
import metaworld
import metaworld.policies
import mujoco
import numpy as np
import torch

MT10 = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)
INSTRUCTIONS = {
    "reach-v3": "reach the goal position",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "door-open-v3": "open the door",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "button-press-topdown-v3": "press the button from the top",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}
PROTOCOLS = ("standard",)  # the training variations; Meta-World has no visual variants
MAX_STEPS = 200  # its scripted policies finish MT10 in 50-150 steps; Meta-World allows 500
STATE_DIM, ACTION_DIM, ENV_STATE_DIM = 4, 4, 39
FEATURE_NAMES = {  # per-dimension names for the LeRobotDataset features
    "state": ["hand_x", "hand_y", "hand_z", "gripper"],
    "environment_state": [f"mw_{i}" for i in range(ENV_STATE_DIM)],
    "action": ["dx", "dy", "dz", "gripper"],
}
CAMERA = "corner"  # the default view; any camera of the Meta-World model can be chosen (task.env.camera)
CAMERAS = ("topview", "corner", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV")
STATES = {"hand_gripper": STATE_DIM, "full": ENV_STATE_DIM}  # what observation.state holds (task.env.state)


def feature_names(state: str = "hand_gripper") -> dict:
    """The per-dimension names of a dataset recorded with this `state` option."""
    if state not in STATES:
        raise ValueError(f"unknown Meta-World state {state!r}; expected one of {list(STATES)}")
    return FEATURE_NAMES | ({"state": FEATURE_NAMES["environment_state"]} if state == "full" else {})


def check_task(task: str) -> None:
    if task not in metaworld.policies.ENV_POLICY_MAP:
        raise ValueError(
            f"unknown Meta-World task {task!r}: any v3 task with a scripted policy runs "
            f"({len(metaworld.policies.ENV_POLICY_MAP)} of them, e.g. {sorted(metaworld.policies.ENV_POLICY_MAP)[:4]}); MT10 is {list(MT10)}"
        )


def max_steps(task: str) -> int:
    check_task(task)
    return MAX_STEPS


class MetaWorldEnv(gym.Env):
    """One Meta-World task with the tabletop suite's observation keys (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(
        self,
        task: str = "reach-v3",
        protocol: str = "standard",
        image_size: int = 64,
        max_episode_steps: int | None = None,
        render_mode: str = "rgb_array",
        camera: str = CAMERA,
        state: str = "hand_gripper",
        **_ignored,  # the tabletop's robot / control_hz: the sawyer runs at Meta-World's own 80 Hz
    ):
        check_task(task)
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r} for Meta-World; expected one of {PROTOCOLS}")
        if camera not in CAMERAS:
            raise ValueError(f"unknown Meta-World camera {camera!r}; expected one of {list(CAMERAS)}")
        if state not in STATES:
            raise ValueError(
                f"unknown Meta-World state {state!r}; expected one of {list(STATES)} "
                "(hand xyz and gripper opening, or Meta-World's whole 39-dim observation)"
            )
        self.camera, self.state = camera, state
        self.task, self.protocol, self.image_size, self.render_mode = task, protocol, image_size, render_mode
        self.task_description = INSTRUCTIONS.get(task, task.removesuffix("-v3").replace("-", " "))
        self.max_episode_steps = max_episode_steps or MAX_STEPS
        self._max_episode_steps = self.max_episode_steps
        self._benchmark = metaworld.MT1(task, seed=0)  # its 50 training variations
        self._env = self._benchmark.train_classes[task]()
        self._renderer = None
        self._steps, self._solved, self._grasped = 0, False, False
        s = image_size
        self.observation_space = gym.spaces.Dict(
            {
                "pixels": gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (s, s, 3), np.uint8)}),
                "agent_pos": gym.spaces.Box(-np.inf, np.inf, (STATES[state],), np.float32),
                "environment_state": gym.spaces.Box(-np.inf, np.inf, (ENV_STATE_DIM,), np.float32),
                "task": gym.spaces.Text(max_length=128, min_length=1),
            }
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        variations = self._benchmark.train_tasks
        index = seed % len(variations) if seed is not None else int(self.np_random.integers(len(variations)))
        self._env.set_task(variations[index])
        raw, _ = self._env.reset(seed=seed)
        if self._renderer is None:
            self._renderer = self._make_renderer()
        self._steps, self._solved, self._grasped = 0, False, False
        return self._observation(raw), {"is_success": False, "grasped": False, "variation": index}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        if action.shape != (ACTION_DIM,):
            raise ValueError(
                f"Meta-World actions are ({ACTION_DIM},) (dx, dy, dz, gripper), got {action.shape}"
            )
        raw, reward, _, _, info = self._env.step(action)
        self._steps += 1
        self._solved = self._solved or bool(info["success"])
        self._grasped = self._grasped or bool(info["grasp_success"])  # at some step so far, as the tabletop's
        info = {
            "is_success": self._solved,
            "success_now": bool(info["success"]),
            "grasped": self._grasped,
            "grasped_now": bool(info["grasp_success"]),
        }
        return self._observation(raw), float(reward), False, self._steps >= self.max_episode_steps, info

    def render(self) -> np.ndarray:
        self._renderer.update_scene(self._env.data, camera=self.camera)
        return np.ascontiguousarray(
            np.flipud(self._renderer.render())
        )  # Meta-World's cameras are upside down

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._env.close()

    def _make_renderer(self) -> mujoco.Renderer:
        # Meta-World's default renderer manages ~8 steps/s here; the arm's 67k mesh faces still bound
        # this one at ~120 frames/s, with shadows, reflections and multisampling off.
        model, s = self._env.model, self.image_size
        model.vis.global_.offwidth, model.vis.global_.offheight = s, s
        model.vis.quality.shadowsize, model.vis.quality.offsamples = 0, 0
        model.light_castshadow[:] = 0
        model.mat_reflectance[:] = 0
        return mujoco.Renderer(model, s, s)

    def _observation(self, raw: np.ndarray) -> dict:
        return {
            "pixels": {"image": self.render()},
            "agent_pos": raw[: STATES[self.state]].astype(np.float32),
            "environment_state": raw.astype(np.float32),
            "task": self.task_description,
        }


class MetaWorldExpert:
    """Meta-World's own scripted policy for a task, with Gaussian action noise (for data generation).
    `act(agent_pos, environment_state)` as the tabletop's expert controller."""

    stop_on_success = True  # a demo ends a few steps after success, as the tabletop's after the retreat

    def __init__(self, task: str, noise: float = 0.0, rng: np.random.Generator | None = None):
        check_task(task)
        self.policy = metaworld.policies.ENV_POLICY_MAP[task]()
        self.noise, self.rng = noise, rng or np.random.default_rng(0)

    def act(self, agent_pos: np.ndarray, environment_state: np.ndarray) -> np.ndarray:
        action = self.policy.get_action(environment_state)
        action = action + self.noise * self.rng.standard_normal(ACTION_DIM)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


class MetaWorldScriptedPolicy:
    """The scripted policies with LeRobot's `reset` / `select_action` contract (privileged state), for
    the evaluation harness."""

    name = "scripted_metaworld"

    def __init__(self, task: str, noise: float = 0.0, seed: int = 0):
        self.expert = MetaWorldExpert(task, noise, np.random.default_rng(seed))

    def reset(self) -> None:
        pass

    def select_action(self, batch: dict) -> torch.Tensor:
        env_state = batch["observation.environment_state"].cpu().numpy()
        return torch.from_numpy(np.stack([self.expert.act(None, s) for s in env_state]))
