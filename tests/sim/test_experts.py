import numpy as np
import pytest
import torch

from sim.env import TabletopEnv
from sim.experts import PlayController, ScriptedPolicy, wrap_yaw


def test_wrap_yaw_symmetry():
    assert wrap_yaw(np.pi - 0.1, np.pi) == pytest.approx(-0.1)
    assert wrap_yaw(0.9, np.pi / 2) == pytest.approx(0.9 - np.pi / 2)
    assert wrap_yaw(-0.2, np.pi) == pytest.approx(-0.2)


def test_push_moves_an_object():
    env = TabletopEnv("stack_block", robot="hand")
    try:
        obs, _ = env.reset(seed=4)
        start = obs["environment_state"].copy()
        play = PlayController("push", rng=np.random.default_rng(0))
        for _ in range(30):
            obs = env.step(play.act(obs["agent_pos"], obs["environment_state"]))[0]
        xy = slice(0, 2) if play.pushed == 0 else slice(4, 6)  # environment_state: source, then target
        moved = np.linalg.norm(obs["environment_state"][xy] - start[xy])
    finally:
        env.close()
    assert moved > 0.02, f"a push should displace the pushed object, moved {moved:.3f} m"


def test_unknown_play_mode_is_rejected():
    with pytest.raises(ValueError, match="unknown play mode 'dance'"):
        PlayController("dance")


def test_scripted_policy_needs_privileged_state():
    policy = ScriptedPolicy("stack_block")
    with pytest.raises(KeyError, match="observation.environment_state"):
        policy.select_action({"observation.state": torch.zeros(1, 7)})
