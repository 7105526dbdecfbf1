"""The Meta-World adapter: the env behind the suite's interface, its scripted policies through the
harness, and demos written as a LeRobotDataset."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from sim.metaworld import MetaWorldEnv, MetaWorldExpert


def test_env_observations_and_success_flag():
    env = MetaWorldEnv("reach-v3", image_size=32)
    try:
        obs, info = env.reset(seed=3)
        assert obs["pixels"]["image"].shape == (32, 32, 3) and obs["pixels"]["image"].std() > 5
        assert obs["agent_pos"].shape == (4,) and obs["environment_state"].shape == (39,)
        assert obs["task"] == "reach the goal position" and info["variation"] == 3
        again, _ = env.reset(seed=3)
        np.testing.assert_array_equal(
            again["environment_state"], obs["environment_state"]
        )  # seeds name scenes
        expert = MetaWorldExpert("reach-v3")
        for _ in range(env.max_episode_steps):
            obs, _, _, truncated, info = env.step(expert.act(obs["agent_pos"], obs["environment_state"]))
            if info["is_success"] or truncated:
                break
        assert info["is_success"]
        with pytest.raises(ValueError, match=r"Meta-World actions are \(4,\)"):
            env.step(np.zeros(7))
    finally:
        env.close()
    with pytest.raises(ValueError, match="unknown Meta-World task 'fly-v3'"):
        MetaWorldEnv("fly-v3")
    with pytest.raises(ValueError, match="unknown protocol 'visual_matching' for Meta-World"):
        MetaWorldEnv("reach-v3", "visual_matching")


def test_scripted_policy_through_the_harness():
    from sim.evaluate import evaluate
    from sim.metaworld import MetaWorldScriptedPolicy

    results = evaluate(
        {"scripted": MetaWorldScriptedPolicy},
        ["drawer-close-v3"],
        ["standard"],
        2,
        num_envs=1,
        suite="metaworld",
    )
    assert results["policies"]["scripted"]["tasks"]["drawer-close-v3"]["standard"]["success"]["rate"] == 1.0
    with pytest.raises(ValueError, match="unknown protocol 'visual_matching' for the metaworld suite"):
        evaluate(
            {"scripted": MetaWorldScriptedPolicy}, ["reach-v3"], ["visual_matching"], 1, suite="metaworld"
        )


def test_demos_are_written_with_the_suite_dims(tmp_path):
    from data.dataset import load_dataset
    from data.generate import close_envs, generate_demos

    task = OmegaConf.create({"suite": "metaworld", "tasks": ["reach-v3"], "image_size": 32, "fps": 80})
    demos = OmegaConf.create({"episodes": 1, "protocols": ["standard"], "noise": 0.1, "seed": 0})
    try:
        out = generate_demos(demos, task, tmp_path / "demos")
    finally:
        close_envs()
    assert out["episodes"] == 1 and out["frames"] < 200  # stops a few steps after success
    features = load_dataset(tmp_path / "demos").meta.features
    assert features["action"]["shape"] == (4,) and features["observation.state"]["shape"] == (4,)


def test_success_and_grasp_stay_latched_within_an_episode(monkeypatch):
    """Meta-World counts a task solved once its flag rises; later steps without it keep the episode solved."""
    env = MetaWorldEnv("reach-v3", image_size=32)
    try:
        obs, _ = env.reset(seed=0)
        flags = iter([(True, True), (False, False)])
        real_step = env._env.step

        def step(action):
            raw, reward, terminated, truncated, info = real_step(action)
            success, grasp = next(flags)
            return raw, reward, terminated, truncated, info | {"success": success, "grasp_success": grasp}

        monkeypatch.setattr(env._env, "step", step)
        env.step(np.zeros(4, np.float32))
        _, _, _, _, info = env.step(np.zeros(4, np.float32))
        assert info["is_success"] and not info["success_now"] and info["grasped"] and not info["grasped_now"]
        env._env.step = real_step
        _, info = env.reset(seed=1)
        assert not info["is_success"] and not info["grasped"]
    finally:
        env.close()
