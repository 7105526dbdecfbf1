"""Labelled robot rollouts for the neural simulator, as a LeRobotDataset v3: episodes of the scripted
expert at several noise levels, the expert that does not turn to the object, and random actions, kept
whether they succeed or not, so the world model sees what failing looks like. Every frame carries the
sim's labels: `success` (the task's test on this frame) and `grasped_now` (both fingers on the object).

    python -m data.generate_rollouts                                # outputs/datasets/rollouts
    python -m data.generate_rollouts data.rollouts.episodes=20 data.rollouts.name=rollouts_small
"""

import sys
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from data.dataset import EXECUTED_ACTION_KEY, SCENE_SEED_KEY, create_dataset, demo_features
from data.generate import _env, close_envs
from sim.env import ACTION_HIGH, ACTION_LOW, TabletopEnv
from sim.experts import ExpertController
from sim.tasks import get_task


def rollout_features(image_size: int) -> dict:
    """The demos' features less the label split (here `action` is what the env was stepped with), plus
    the sim's per-step verdicts."""
    flag = {"dtype": "float32", "shape": (1,), "names": None}
    kept = {
        k: v for k, v in demo_features(image_size).items() if k not in (EXECUTED_ACTION_KEY, SCENE_SEED_KEY)
    }
    return kept | {"success": flag, "grasped_now": flag}


class UniformController:
    """Uniform random actions over the action box."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def act(self, agent_pos, env_state) -> np.ndarray:
        return self.rng.uniform(ACTION_LOW, ACTION_HIGH).astype(np.float32)


def make_controller(kind: DictConfig, task: str, rng: np.random.Generator):
    if kind.policy == "random":
        return UniformController(rng)
    return ExpertController(get_task(task), noise=kind.noise, rng=rng, align_yaw=kind.get("align_yaw", True))


def record(env: TabletopEnv, controller, seed: int, ds) -> bool:
    """One full-length episode into `ds`; frame t holds the observation, labels and the action taken."""
    obs, info = env.reset(seed=seed)
    for _ in range(env.max_episode_steps):
        action = controller.act(obs["agent_pos"], obs["environment_state"])
        ds.add_frame(
            {
                "observation.images.image": obs["pixels"]["image"],
                "observation.state": obs["agent_pos"],
                "observation.environment_state": obs["environment_state"],
                "action": action,
                "success": np.array([info.get("is_success", False)], np.float32),
                "grasped_now": np.array([info.get("grasped_now", False)], np.float32),
                "task": env.task_description,
            }
        )
        obs, _, _, _, info = env.step(action)
    ds.save_episode()
    return bool(info["is_success"])


def generate_rollouts(cfg: DictConfig, task_cfg: DictConfig, root: Path) -> dict:
    """`cfg.episodes` episodes, tasks in turn, each by a controller kind drawn with `cfg.kinds` weights."""
    tasks, kinds = list(task_cfg.tasks), list(cfg.kinds)
    weights = np.array([k.weight for k in kinds], dtype=float)
    rng = np.random.default_rng(cfg.seed)
    successes: dict[str, list[bool]] = {k.name: [] for k in kinds}
    with create_dataset(root, rollout_features(task_cfg.image_size), task_cfg.fps, "widowx_sim") as ds:
        for i in tqdm(range(cfg.episodes), desc="rollouts", unit="ep"):
            task, kind = tasks[i % len(tasks)], kinds[rng.choice(len(kinds), p=weights / weights.sum())]
            env = _env(task, cfg.protocol, task_cfg, "widowx")
            controller = make_controller(kind, task, np.random.default_rng(rng.integers(2**31)))
            successes[kind.name].append(record(env, controller, int(cfg.seed) + i, ds))
        frames = ds.meta.total_frames
    rates = {k: f"{sum(v)}/{len(v)}" for k, v in successes.items()}
    return {"episodes": cfg.episodes, "frames": frames, "successes": rates, "path": str(root)}


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    root = Path(cfg.data.root) / cfg.data.rollouts.name
    try:
        out = generate_rollouts(cfg.data.rollouts, cfg.task, root)
    finally:
        close_envs()
    print(
        f"rollouts: {out['episodes']} episodes ({out['frames']} frames), successes {out['successes']} -> {out['path']}"
    )
    print("command: python -m data.generate_rollouts " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
