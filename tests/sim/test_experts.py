import numpy as np
import pytest
import torch

from sim.env import TabletopEnv
from sim.evaluate import make_vector_env, run_episodes
from sim.experts import ChunkedExpertPolicy, PlayController, ScriptedPolicy, wrap_yaw


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


def test_chunked_expert_plans_open_loop_chunks_that_succeed():
    policy = ChunkedExpertPolicy("stack_block", chunk_size=14, n_action_steps=7)
    envs = make_vector_env("stack_block", "visual_matching", 1)
    try:
        outcome = run_episodes(policy, envs, episodes=2, max_steps=60, seed=1000)
    finally:
        envs.close()
    assert outcome["success"] == [True, True]  # replanning every 7 steps from the observed state
    env = TabletopEnv("stack_block")
    obs, _ = env.reset(seed=0)
    env.close()
    batch = {
        "observation.state": torch.from_numpy(obs["agent_pos"])[None],
        "observation.environment_state": torch.from_numpy(obs["environment_state"])[None],
    }
    policy.reset()
    chunk = policy.predict_action_chunk(batch)
    assert chunk.shape == (1, 14, 7) and torch.isfinite(chunk).all()
    # The imagined hand heads for the object: the chunk's summed displacement shrinks the distance to it.
    hand, src = obs["agent_pos"][:2], obs["environment_state"][:2]
    moved = hand + chunk[0, :, :2].sum(0).numpy()
    assert np.linalg.norm(moved - src) < np.linalg.norm(hand - src)
    with pytest.raises(ValueError, match="n_action_steps"):
        ChunkedExpertPolicy("stack_block", chunk_size=4, n_action_steps=5)


def test_belief_error_moves_where_the_expert_goes_once_per_episode():
    """pose_noise shifts where the expert believes the objects are, by one error per episode (reset
    draws a new one), never their height; without it the expert is unchanged."""
    state = torch.tensor([[0.1, 0.05, 0.13, 0, 0, 0, 1.0]] * 2)  # the hand above the source: no clipping
    env_state = torch.tensor([[0.1, 0.05, 0.02, 0.3, -0.1, 0.0, 0.01, 0.0]] * 2)
    batch = {"observation.state": state, "observation.environment_state": env_state}
    clean = ScriptedPolicy("stack_block").select_action(batch)
    assert torch.equal(clean, ScriptedPolicy("stack_block", pose_noise=0.0).select_action(batch))
    noisy = ScriptedPolicy("stack_block", pose_noise=0.01, yaw_noise=0.2, seed=1)
    first = noisy.select_action(batch)
    assert not torch.allclose(first[:, :2], clean[:, :2]) and not torch.allclose(first[0], first[1])
    error = noisy.belief_errors[0]
    assert error[[2, 6]].tolist() == [0, 0] and np.all(error[[0, 1, 3, 4, 5, 7]] != 0)
    assert torch.equal(noisy.select_action(batch), first)  # the same error for the rest of the episode
    noisy.reset()
    assert not torch.equal(noisy.select_action(batch), first)
