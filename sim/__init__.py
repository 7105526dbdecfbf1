"""MuJoCo tabletop task suite modelled on SIMPLER's WidowX/Bridge tasks, with its evaluation harness."""

import gymnasium as gym

from sim.tasks import PROTOCOLS, TASKS, get_task

for _task in TASKS.values():
    if _task.gym_id not in gym.registry:
        gym.register(id=_task.gym_id, entry_point="sim.env:TabletopEnv", kwargs={"task": _task.name})

__all__ = ["PROTOCOLS", "TASKS", "get_task"]
