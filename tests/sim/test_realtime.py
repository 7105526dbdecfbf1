"""The sim suite's arm as a LeRobot Robot in (fake) wall-clock time."""

import numpy as np
import pytest

from policies.control import FakeClock
from sim.env import TabletopEnv
from sim.realtime import MujocoRobot, MujocoRobotConfig


@pytest.fixture
def robot():
    clock = FakeClock()
    robot = MujocoRobot(MujocoRobotConfig(task="stack_block", seed=3), clock=clock.now)
    robot.connect()
    yield robot, clock
    robot.disconnect()


def test_features_describe_what_it_returns(robot):
    robot, _ = robot
    obs = robot.get_observation()
    assert list(obs) == list(robot.observation_features)
    assert obs["image"].shape == robot.observation_features["image"] and obs["image"].dtype == np.uint8
    assert len(robot.action_features) == 7 and robot.instruction.startswith("stack")


def test_the_scene_is_the_one_the_env_draws_for_the_seed(robot):
    robot, _ = robot
    env = TabletopEnv("stack_block")
    obs, _ = env.reset(seed=3)
    env.close()
    np.testing.assert_array_equal(robot.get_observation()["image"], obs["pixels"]["image"])


def test_physics_moves_only_as_the_clock_does(robot):
    robot, clock = robot
    x0 = robot.get_observation()["x.pos"]
    action = {k: 0.0 for k in robot.action_features} | {"x.delta": 0.03}
    robot.send_action(action)
    assert robot.get_observation()["x.pos"] == x0  # no time passed: the hand has not moved yet
    clock.advance(0.5)
    x1 = robot.get_observation()["x.pos"]
    assert x1 - x0 == pytest.approx(0.03, abs=0.006)  # 25 physics steps later it reached the target
    assert robot._steps_done == 25


def test_bad_actions_and_use_before_connect_are_refused(robot):
    robot, _ = robot
    with pytest.raises(KeyError, match="lacks"):
        robot.send_action({"x.delta": 0.0})
    with pytest.raises(ValueError, match="finite"):
        robot.send_action({k: float("nan") for k in robot.action_features})
    idle = MujocoRobot(MujocoRobotConfig())
    with pytest.raises(RuntimeError, match="not connected"):
        idle.get_observation()
    with pytest.raises(ValueError, match="unknown protocol"):
        MujocoRobotConfig(protocol="sunny")
