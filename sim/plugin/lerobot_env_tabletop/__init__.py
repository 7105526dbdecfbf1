"""LeRobot plugin entry: importing it registers env type "tabletop" (sim.lerobot_env) and the gym ids."""

import sim  # noqa: F401  (MUJOCO_GL before mujoco, and the Tabletop/* gym ids)
from sim.lerobot_env import TabletopEnvConfig

__all__ = ["TabletopEnvConfig"]
