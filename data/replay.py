"""Replay a generated demo dataset in the simulator: reset each episode's scene from its seed, step the
recorded executed actions, and compare every stored frame with the fresh render of that step.

    max_error, frames = compare_with_renders("outputs/datasets/demos", episodes=[0, 1])

A lossless dataset gives 0 (the frames a policy trains on are those it is evaluated on); a lossy video
gives the codec's error.
"""

from pathlib import Path

import numpy as np

from data.clips import episode_columns, load_episode_frames
from data.dataset import EXECUTED_ACTION_KEY, SCENE_SEED_KEY, load_metadata
from sim.env import TabletopEnv
from sim.tasks import TASKS

TASK_OF_INSTRUCTION = {t.instruction: name for name, t in TASKS.items()}


def compare_with_renders(
    root: str | Path,
    episodes: list[int] | None = None,
    image_key: str = "observation.images.image",
    protocol: str = "visual_matching",
) -> tuple[int, int]:
    """(largest absolute pixel difference 0..255, frames compared) between the dataset's frames of
    `episodes` (default all) and fresh renders of the same steps."""
    root = Path(root)
    meta = load_metadata(root, required_keys=[image_key, EXECUTED_ACTION_KEY, SCENE_SEED_KEY])
    chosen = list(range(meta.total_episodes) if episodes is None else episodes)
    stored = load_episode_frames(root, image_key, chosen, expect_lossless=False)
    table = episode_columns(root, [EXECUTED_ACTION_KEY, SCENE_SEED_KEY, "task_index"])
    instructions = {int(i): name for name, i in zip(meta.tasks.index, meta.tasks["task_index"], strict=True)}
    size, fps = meta.features[image_key]["shape"][0], meta.fps
    envs: dict[str, TabletopEnv] = {}
    worst, compared = 0, 0
    try:
        for ep in chosen:
            rows = np.flatnonzero(table["episode_index"] == ep)
            task = TASK_OF_INSTRUCTION[instructions[int(table["task_index"][rows[0]])]]
            if task not in envs:
                envs[task] = TabletopEnv(task, protocol, image_size=size, control_hz=fps)
            env = envs[task]
            obs, _ = env.reset(seed=int(table[SCENE_SEED_KEY][rows[0]]))
            frames = stored[ep].permute(0, 2, 3, 1).numpy()  # (L, H, W, 3)
            for i, row in enumerate(rows):
                diff = np.abs(frames[i].astype(np.int16) - obs["pixels"]["image"].astype(np.int16))
                worst, compared = max(worst, int(diff.max())), compared + 1
                obs = env.step(table[EXECUTED_ACTION_KEY][row])[0]
    finally:
        for env in envs.values():
            env.close()
    return worst, compared
