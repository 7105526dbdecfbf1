"""The four SIMPLER/Bridge-style tasks: which objects, the instruction, the horizon, the success test."""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sim.scene import OBJECT_HALF_HEIGHT


def _in_frame(point: np.ndarray, origin: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """`point` expressed in the frame (origin, rot) of a target object."""
    return rot.T @ (point - origin)


def spoon_on_towel(src, src_rot, tgt, tgt_rot) -> bool:
    local = _in_frame(src, tgt, tgt_rot)
    return bool(abs(local[0]) < 0.075 and abs(local[1]) < 0.075 and 0.0 < local[2] < 0.03)


def carrot_on_plate(src, src_rot, tgt, tgt_rot) -> bool:
    local = _in_frame(src, tgt, tgt_rot)
    return bool(np.hypot(local[0], local[1]) < 0.07 and 0.0 < local[2] < 0.04)


def green_on_yellow(src, src_rot, tgt, tgt_rot) -> bool:
    local = _in_frame(src, tgt, tgt_rot)
    on_top = OBJECT_HALF_HEIGHT["yellow_block"] + OBJECT_HALF_HEIGHT["green_block"]
    return bool(abs(local[0]) < 0.032 and abs(local[1]) < 0.032 and abs(local[2] - on_top) < 0.012)


def eggplant_in_basket(src, src_rot, tgt, tgt_rot) -> bool:
    local = _in_frame(src, tgt, tgt_rot)
    return bool(abs(local[0]) < 0.105 and abs(local[1]) < 0.08 and local[2] < 0.03)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    instruction: str
    source: str
    target: str
    max_steps: int
    is_placed: Callable[..., bool]  # (src_pos, src_rot, tgt_pos, tgt_rot) -> object on target
    release_dz: float  # height of the object's centre above the target's centre when released (m)
    align_to_target: bool = False  # turn the object to the target's yaw before release
    symmetric_grasp: bool = False  # square object: any yaw modulo 90 degrees grasps it

    @property
    def gym_id(self) -> str:
        return f"Tabletop/{''.join(w.capitalize() for w in self.name.split('_'))}-v0"


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec(
            "spoon_on_towel",
            "put the spoon on the towel",
            "spoon",
            "towel",
            60,
            spoon_on_towel,
            release_dz=0.04,
        ),
        TaskSpec(
            "carrot_on_plate",
            "put carrot on plate",
            "carrot",
            "plate",
            60,
            carrot_on_plate,
            release_dz=0.045,
        ),
        TaskSpec(
            "stack_block",
            "stack the green block on the yellow block",
            "green_block",
            "yellow_block",
            60,
            green_on_yellow,
            release_dz=0.06,
            symmetric_grasp=True,
        ),
        TaskSpec(
            "eggplant_in_basket",
            "put the eggplant in the basket",
            "eggplant",
            "basket",
            120,
            eggplant_in_basket,
            release_dz=0.06,
            align_to_target=True,
        ),
    ]
}
PROTOCOLS = ("visual_matching", "variant_aggregation")


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name]
