"""MJCF for the tabletop scene: table, camera, one manipulator and every task object.

A task's model holds its two objects and the distractors it may draw; a reset puts the two objects
and some distractors on the table and parks the rest out of view. Appearance variants (lighting, table material,
background, camera pose) are applied at reset by editing the compiled model, so a scene is
compiled once per env.

Frames: x points away from the robot base, y to its left, z up; the table top is z = 0.
"""

from dataclasses import dataclass

import numpy as np

# Objects: name -> (body xml, half-height of the object above the table when resting).
# Sizes are chosen so that the long objects (12-14 cm) do not fit the open gripper (10 cm) lengthwise:
# the gripper must turn to the object's yaw to grasp it.
OBJECT_XML = {
    "spoon": """
      <geom type="capsule" size="0.009 0.05" pos="-0.02 0 0" euler="0 90 0" rgba="0.75 0.75 0.8 1" class="obj"/>
      <geom type="ellipsoid" size="0.032 0.022 0.009" pos="0.055 0 0" rgba="0.85 0.85 0.9 1" class="obj"/>""",
    "towel": """
      <geom type="box" size="0.075 0.075 0.003" rgba="0.15 0.35 0.85 1" class="obj"/>""",
    "carrot": """
      <geom type="capsule" size="0.016 0.045" euler="0 90 0" rgba="0.95 0.45 0.05 1" class="roller"/>
      <geom type="box" size="0.012 0.014 0.006" pos="-0.068 0 0" rgba="0.1 0.6 0.1 1" class="obj"/>""",
    "plate": """
      <geom type="box" size="0.06 0.06 0.006" class="collider" mass="0.1"/>
      <geom type="cylinder" size="0.075 0.006" rgba="0.95 0.95 0.95 1" class="vis"/>
      <geom type="cylinder" size="0.045 0.0065" rgba="0.85 0.85 0.85 1" class="vis"/>""",
    "green_block": """
      <geom type="box" size="0.022 0.022 0.022" rgba="0.1 0.75 0.2 1" class="obj"/>""",
    "yellow_block": """
      <geom type="box" size="0.032 0.032 0.025" rgba="0.95 0.85 0.1 1" class="obj" mass="0.4"/>""",
    "eggplant": """
      <geom type="ellipsoid" size="0.06 0.024 0.022" rgba="0.4 0.1 0.5 1" class="obj"/>
      <geom type="cylinder" size="0.012 0.008" pos="-0.062 0 0" euler="0 90 0" rgba="0.15 0.55 0.15 1" class="obj"/>""",
    "basket": """
      <geom type="box" size="0.11 0.085 0.004" pos="0 0 -0.031" rgba="0.55 0.35 0.15 1" class="obj" mass="0.3"/>
      <geom type="box" size="0.11 0.006 0.035" pos="0 0.085 0" rgba="0.6 0.4 0.2 1" class="obj" mass="0.1"/>
      <geom type="box" size="0.11 0.006 0.035" pos="0 -0.085 0" rgba="0.6 0.4 0.2 1" class="obj" mass="0.1"/>
      <geom type="box" size="0.006 0.085 0.035" pos="0.11 0 0" rgba="0.6 0.4 0.2 1" class="obj" mass="0.1"/>
      <geom type="box" size="0.006 0.085 0.035" pos="-0.11 0 0" rgba="0.6 0.4 0.2 1" class="obj" mass="0.1"/>""",
    "red_ball": """
      <geom type="sphere" size="0.025" rgba="0.85 0.1 0.1 1" class="obj"/>""",
    "cyan_can": """
      <geom type="box" size="0.018 0.018 0.035" class="collider"/>
      <geom type="cylinder" size="0.022 0.035" rgba="0.1 0.8 0.85 1" class="vis"/>""",
    "pink_cup": """
      <geom type="box" size="0.022 0.022 0.03" class="collider"/>
      <geom type="cylinder" size="0.028 0.03" rgba="0.95 0.5 0.7 1" class="vis"/>""",
}
OBJECT_HALF_HEIGHT = {
    "spoon": 0.009,
    "towel": 0.003,
    "carrot": 0.016,
    "plate": 0.006,
    "green_block": 0.022,
    "yellow_block": 0.025,
    "eggplant": 0.022,
    "basket": 0.035,
    "red_ball": 0.025,
    "cyan_can": 0.035,
    "pink_cup": 0.03,
}
# Radius of the footprint, used to keep sampled objects apart.
OBJECT_RADIUS = {
    "spoon": 0.08,
    "towel": 0.1,
    "carrot": 0.075,
    "plate": 0.075,
    "green_block": 0.035,
    "yellow_block": 0.045,
    "eggplant": 0.07,
    "basket": 0.14,
    "red_ball": 0.03,
    "cyan_can": 0.03,
    "pink_cup": 0.035,
}
OBJECT_NAMES = tuple(OBJECT_XML)

# Gripper geometry shared by both embodiments: fingers slide along the hand's local y axis.
FINGER_TRAVEL = 0.05  # m per finger: the open gap is 10 cm (8 before calibration: reports/calibration.md)
FINGER_LENGTH = 0.05  # m from the wrist frame down to the fingertips
FINGER_SQUEEZE = 0.015  # closed command aims past the closed stop, so the grip force saturates
TABLE_MATERIALS = ("table_plain", "table_checker", "table_grid")


@dataclass(frozen=True)
class SceneSpec:
    robot: str = "widowx"  # "widowx" (arm with parallel gripper) or "hand" (floating hand)
    objects: tuple[str, ...] = OBJECT_NAMES  # the objects compiled in: each free body costs simulation time
    image_size: int = 64
    timestep: float = 0.02


def _gripper_xml(robot: str) -> str:
    """The hand and its two slide fingers. Identity orientation points the fingers down.

    The hand is a dynamic body welded to a mocap target, not a mocap body itself: a teleported mocap
    body has no velocity, so its fingers would slide off objects instead of carrying them by friction.
    """
    if robot == "widowx":
        palm = """
        <geom type="box" size="0.018 0.05 0.012" pos="0 0 0.012" rgba="0.12 0.12 0.12 1" class="vis"/>
        <geom type="cylinder" size="0.02 0.02" pos="0 0 0.045" rgba="0.2 0.2 0.22 1" class="vis"/>"""
        finger = '<geom type="box" size="0.012 0.006 0.025" pos="0 {sy} -0.025" rgba="0.25 0.25 0.25 1" class="finger"/>'
    elif robot == "hand":
        palm = """
        <geom type="ellipsoid" size="0.04 0.055 0.02" pos="0 0 0.015" rgba="0.93 0.72 0.58 1" class="vis"/>
        <geom type="capsule" size="0.03 0.08" pos="-0.06 0 0.09" euler="0 -40 0" rgba="0.2 0.3 0.6 1" class="vis"/>"""
        finger = '<geom type="capsule" size="0.008 0.022" pos="0 {sy} -0.024" rgba="0.9 0.68 0.55 1" class="finger"/>'
    else:
        raise ValueError(f"unknown robot {robot!r}; expected 'widowx' or 'hand'")
    return f"""
    <body name="hand_target" mocap="true" pos="0.3 0 0.25"/>
    <body name="hand" pos="0.3 0 0.25" gravcomp="1">
      <freejoint name="hand"/>
      <inertial pos="0 0 0" mass="0.5" diaginertia="0.002 0.002 0.002"/>{palm}
      <body name="finger_left" pos="0 0 0" gravcomp="1">
        <joint name="finger_left" type="slide" axis="0 1 0" range="0 {FINGER_TRAVEL}" damping="10" armature="0.1"/>
        {finger.format(sy=0.006)}
      </body>
      <body name="finger_right" pos="0 0 0" gravcomp="1">
        <joint name="finger_right" type="slide" axis="0 -1 0" range="0 {FINGER_TRAVEL}" damping="10" armature="0.1"/>
        {finger.format(sy=-0.006)}
      </body>
    </body>"""


def _arm_xml(robot: str) -> str:
    """Visual arm links, posed kinematically each step (see sim.robot.pose_arm); no collisions."""
    if robot != "widowx":
        return ""
    link = '<body name="{name}" mocap="true"><geom type="capsule" size="{r} {h}" rgba="{rgba}" class="vis"/></body>'
    return "\n".join(
        [
            '<body name="arm_base" pos="-0.05 0 0.04"><geom type="cylinder" size="0.05 0.04" rgba="0.15 0.15 0.15 1" class="vis"/></body>',
            link.format(name="upper_arm", r=0.022, h=0.17, rgba="0.18 0.18 0.2 1"),
            link.format(name="forearm", r=0.018, h=0.17, rgba="0.22 0.22 0.25 1"),
            link.format(name="wrist_link", r=0.015, h=0.03, rgba="0.3 0.3 0.32 1"),
        ]
    )


def _objects_xml(objects: tuple[str, ...]) -> str:
    unknown = sorted(set(objects) - set(OBJECT_XML))
    if unknown:
        raise ValueError(f"unknown object(s) {unknown}; expected names from {OBJECT_NAMES}")
    bodies = []
    for i, name in enumerate(objects):
        bodies.append(
            f'<body name="{name}" pos="{3 + 0.4 * i} 0 0.1"><freejoint name="{name}"/>{OBJECT_XML[name]}\n    </body>'
        )
    return "\n    ".join(bodies)


def build_scene_xml(spec: SceneSpec) -> str:
    s = spec.image_size
    return f"""
<mujoco model="tabletop_{spec.robot}">
  <compiler angle="degree"/>
  <option timestep="{spec.timestep}" cone="elliptic" impratio="10" integrator="implicitfast">
    <flag multiccd="enable"/>
  </option>
  <visual>
    <global offwidth="{s}" offheight="{s}"/>
    <quality shadowsize="0" offsamples="0" numslices="10" numstacks="6" numquads="1"/>
    <headlight ambient="0.3 0.3 0.3" diffuse="0.3 0.3 0.3" specular="0 0 0"/>
  </visual>
  <asset>
    <texture name="checker" type="2d" builtin="checker" width="64" height="64" rgb1="1 1 1" rgb2="0.7 0.7 0.7"/>
    <texture name="grid" type="2d" builtin="gradient" width="64" height="64" rgb1="1 1 1" rgb2="0.6 0.6 0.6"/>
    <material name="table_plain" rgba="0.78 0.62 0.45 1"/>
    <material name="table_checker" texture="checker" texrepeat="6 6" rgba="0.78 0.62 0.45 1"/>
    <material name="table_grid" texture="grid" texrepeat="3 3" rgba="0.78 0.62 0.45 1"/>
    <material name="backdrop" rgba="0.85 0.87 0.9 1"/>
  </asset>
  <default>
    <default class="obj">
      <geom condim="4" friction="1.2 0.01 0.001" mass="0.05" solref="{2 * spec.timestep} 1"/>
    </default>
    <default class="roller">
      <!-- a round body with rolling friction (condim 6): a real carrot is no perfect cylinder, and one
           that rolls freely leaves the plate, then the table, whenever it is set down moving -->
      <geom condim="6" friction="1.2 0.01 0.005" mass="0.05" solref="{2 * spec.timestep} 1"/>
    </default>
    <default class="finger">
      <geom condim="4" friction="2 0.02 0.001" mass="0.05" solref="{2 * spec.timestep} 1"/>
    </default>
    <default class="collider">
      <!-- cylinders rest badly on boxes at this time step: collide as a box, draw the cylinder -->
      <geom condim="4" friction="1.2 0.01 0.001" mass="0.05" solref="{2 * spec.timestep} 1" rgba="0 0 0 0"/>
    </default>
    <default class="vis">
      <geom contype="0" conaffinity="0" mass="0"/>
    </default>
  </default>
  <worldbody>
    <light name="key" pos="0.3 -0.3 1.2" dir="0 0.25 -1" diffuse="0.6 0.6 0.6" castshadow="false"/>
    <light name="fill" pos="0.8 0.4 0.8" dir="-0.5 -0.3 -0.8" diffuse="0.25 0.25 0.25" castshadow="false"/>
    <camera name="main" pos="0.9 0 0.55" xyaxes="0 1 0 -0.55 0 0.83" fovy="50"/>
    <geom name="floor" type="box" size="3 3 0.05" pos="0 0 -0.8" rgba="0.4 0.4 0.42 1"/>
    <geom name="table" type="box" size="0.45 0.4 0.05" pos="0.3 0 -0.05" material="table_plain"/>
    <geom name="backdrop" type="box" size="0.02 1.2 0.8" pos="-0.35 0 0.2" material="backdrop" contype="0" conaffinity="0"/>
    {_arm_xml(spec.robot)}
    {_gripper_xml(spec.robot)}
    {_objects_xml(spec.objects)}
  </worldbody>
  <equality>
    <weld body1="hand_target" body2="hand" solref="{2 * spec.timestep} 1"/>
    <joint joint1="finger_left" joint2="finger_right" polycoef="0 1 0 0 0"/>
  </equality>
  <actuator>
    <position name="grip" joint="finger_left" kp="400" ctrlrange="{-FINGER_SQUEEZE} {FINGER_TRAVEL}" forcerange="-6 6"/>
  </actuator>
</mujoco>
"""


def look_at_xyaxes(pos: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera x and y axes (MuJoCo's `xyaxes`) for a camera at `pos` looking at `target`, z up."""
    forward = target - pos
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right = right / np.linalg.norm(right)
    up = np.cross(right, forward)
    return np.concatenate([right, up])
