import json
import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from sim import variant_factors
from sim.env import ACTION_HIGH, ACTION_LOW
from sim.evaluate import evaluate, make_vector_env, obs_to_batch, results_markdown, run_episodes, write_report
from sim.experts import RandomPolicy, ScriptedPolicy


def test_obs_to_batch_follows_lerobot_keys():
    envs = make_vector_env("stack_block", "visual_matching", num_envs=1)
    try:
        obs, _ = envs.reset(seed=0)
        batch = obs_to_batch(obs)
    finally:
        envs.close()
    assert batch["observation.images.image"].shape == (1, 3, 64, 64)
    assert batch["observation.images.image"].min() >= 0.0 and batch["observation.images.image"].max() <= 1.0
    assert batch["observation.state"].shape == (1, 7) and batch["observation.environment_state"].shape == (
        1,
        8,
    )
    assert batch["task"] == ["stack the green block on the yellow block"]


def test_scripted_and_random_through_parallel_envs(tmp_path):
    policies = {"scripted": ScriptedPolicy, "random": RandomPolicy}
    results = evaluate(
        policies,
        ["stack_block"],
        ["visual_matching", "variant_aggregation"],
        episodes=3,
        num_envs=2,
        seed=0,
        video_dir=tmp_path / "videos",
    )
    scripted = results["policies"]["scripted"]
    random = results["policies"]["random"]
    for protocol in ("visual_matching", "variant_aggregation"):
        assert (
            scripted["tasks"]["stack_block"][protocol]["success"]["n"] == 3
        )  # 3 episodes on 2 envs: extras dropped
        assert scripted["average"][protocol]["success"] == 1.0
        assert random["average"][protocol]["success"] == 0.0
        lo, hi = scripted["tasks"]["stack_block"][protocol]["success"]["ci95"]
        assert 0.4 < lo < 0.5 and hi == 1.0  # Wilson 95% for 3/3
        close = scripted["tasks"]["stack_block"][protocol]["first_close"]
        assert len(close["to_source_cm"]) == 3 and max(close["to_source_cm"]) < 1.5
    assert (tmp_path / "videos" / "scripted_stack_block_visual_matching.mp4").stat().st_size > 1000

    table = write_report(results, tmp_path, "python -m sim.evaluate test")
    assert "| stack_block | 100 [44, 100] / 100 | 0 [0, 56] / 0 |" in table
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["command"] == "python -m sim.evaluate test" and saved["episodes_per_task"] == 3
    assert "Command: `python -m sim.evaluate test`" in (tmp_path / "results.md").read_text()
    assert saved["machine"]["cores"] == os.cpu_count() and saved["machine"]["cpu"]  # what it ran on
    assert results_markdown(results).count("| average |") == 2
    assert "| stack_block | 100 / 100 / " in table  # the expert closed on the object every time


@pytest.mark.parametrize("num_envs", [1, 2])
def test_waves_of_episodes_start_from_their_seeds(num_envs):
    """A second wave after a full-length first one starts from the seeded scene (no stray autoreset)."""
    envs = make_vector_env("stack_block", "visual_matching", num_envs=num_envs)
    zeros = np.zeros((num_envs, 7), dtype=np.float32)
    first_steps = []
    try:
        for _ in range(2):
            envs.reset(seed=list(range(10, 10 + num_envs)))
            first_steps.append(envs.step(zeros)[0]["agent_pos"])
            for _ in range(59):
                truncated = envs.step(zeros)[3]
            assert truncated.all()
    finally:
        envs.close()
    np.testing.assert_array_equal(first_steps[0], first_steps[1])


class WrongShapePolicy:
    def reset(self):
        pass

    def select_action(self, batch):
        return torch.zeros(len(batch["task"]), 6)


def test_policy_with_wrong_action_shape_is_named():
    envs = make_vector_env("spoon_on_towel", "visual_matching", num_envs=1)
    try:
        with pytest.raises(
            ValueError, match=r"policy 'bad' returned actions of shape \(1, 6\); expected \(1, 7\)"
        ):
            run_episodes(WrongShapePolicy(), envs, episodes=1, max_steps=2, policy_name="bad")
    finally:
        envs.close()


def test_bad_evaluation_arguments_are_rejected():
    with pytest.raises(ValueError, match="unknown protocol 'real'"):
        evaluate({"random": RandomPolicy}, ["stack_block"], ["real"], episodes=1)
    with pytest.raises(ValueError, match="episodes and num_envs must be >= 1"):
        evaluate({"random": RandomPolicy}, ["stack_block"], ["visual_matching"], episodes=0)
    with pytest.raises(ValueError, match="at least one policy"):
        evaluate({}, ["stack_block"], ["visual_matching"], episodes=1)
    with pytest.raises(ValueError, match="unknown task"):
        evaluate({"random": RandomPolicy}, ["fold_towel"], ["visual_matching"], episodes=1)


def test_random_policy_samples_inside_action_box():
    actions = RandomPolicy(seed=0).select_action({"observation.state": np.zeros((256, 7))}).numpy()
    assert actions.shape == (256, 7)
    assert np.all(actions >= ACTION_LOW) and np.all(actions <= ACTION_HIGH)
    assert np.all(actions.min(0) < ACTION_LOW + 0.1 * (ACTION_HIGH - ACTION_LOW))  # spans the box


class NoiseRecorder:
    """Draws from torch's global generator at every step, as a sampling policy does; acts with zeros."""

    def __init__(self):
        self.draws = []

    def reset(self):
        pass

    def select_action(self, batch):
        self.draws.append(torch.randn(len(batch["observation.state"]), 3))
        return torch.zeros(len(batch["observation.state"]), 7)


def test_a_sampling_policy_draws_the_same_noise_on_the_same_scenes():
    envs = make_vector_env("stack_block", "visual_matching", num_envs=2)
    try:
        first, second = NoiseRecorder(), NoiseRecorder()
        run_episodes(first, envs, episodes=4, max_steps=2, seed=7)
        torch.manual_seed(12345)  # whatever the generator held before
        run_episodes(second, envs, episodes=4, max_steps=2, seed=7)
        third = NoiseRecorder()
        run_episodes(third, envs, episodes=4, max_steps=2, seed=9)
    finally:
        envs.close()
    assert len(first.draws) == 4  # two waves of two steps
    torch.testing.assert_close(torch.stack(first.draws), torch.stack(second.draws), rtol=0, atol=0)
    assert not torch.equal(torch.stack(first.draws), torch.stack(third.draws))  # other scenes, other noise
    assert not torch.equal(first.draws[0], first.draws[2])  # and each wave its own


def test_variant_factors_measures_every_setting_on_the_same_scenes(tmp_path):
    """The expert reads the true poses, so it succeeds whatever varies; random never does."""
    cfg = OmegaConf.create(
        {
            "task": {"tasks": ["stack_block"], "image_size": 64, "fps": 5.0},
            "eval": {"episodes_per_task": 2, "num_envs": 1, "seed": 0},
        }
    )
    settings = {s: variant_factors.SETTINGS[s] for s in ("visual_matching", "none", "camera", "all")}
    success = variant_factors.measure({"scripted": ScriptedPolicy, "random": RandomPolicy}, cfg, settings)
    assert list(success["scripted"]) == list(settings)
    assert all(success["scripted"][s]["success"] == 1.0 for s in settings)
    assert all(success["random"][s]["success"] == 0.0 for s in settings)
    assert success["scripted"]["camera"]["per_task"] == {"stack_block": 1.0}
    table = variant_factors.markdown(success, 2)
    assert "| scripted | 100.0 / 100 | 100.0 / 100 | 100.0 / 100 | 100.0 / 100 |" in table
    variant_factors.bar_chart(success, tmp_path / "factors.png")
    assert (tmp_path / "factors.png").stat().st_size > 1000
