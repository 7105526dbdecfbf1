"""MuJoCo tabletop task suite modelled on SIMPLER's WidowX/Bridge tasks, with its evaluation harness."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # offscreen rendering; must be set before mujoco is imported
# Mesa's software rasterizer: its worker threads cost more than they save on 64x64 frames (1.4 -> 0.9 ms).
os.environ.setdefault("LP_NUM_THREADS", "0")

import gymnasium as gym  # noqa: E402

from sim.tasks import PROTOCOLS, TASKS, get_task  # noqa: E402

for _task in TASKS.values():
    if _task.gym_id not in gym.registry:
        gym.register(id=_task.gym_id, entry_point="sim.env:TabletopEnv", kwargs={"task": _task.name})

__all__ = ["PROTOCOLS", "TASKS", "get_task"]
