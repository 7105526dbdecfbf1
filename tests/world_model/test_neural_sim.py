"""The neural simulator: its warp, training on generated rollouts, the gymnasium env around it (fixed seeds
give identical rollouts; gymnasium's checker), the judge's reading and the clipping of unseen actions."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from world_model.neural_sim import FrameProbe, NeuralDynamics, NeuralSimConfig, warp

TINY = {"image_size": 32, "width": 8, "levels": 2, "blocks": 1, "cond_dim": 16, "probe_width": 8}


def test_warp_moves_pixels_by_the_flow():
    frame = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(warp(frame, torch.zeros(1, 2, 8, 8)), frame)
    shifted = warp(frame, torch.stack([torch.ones(8, 8), torch.zeros(8, 8)])[None])  # out(x) = in(x + 1)
    torch.testing.assert_close(shifted[..., :-1], frame[..., 1:])


def test_untrained_dynamics_copy_the_frame():
    cfg = NeuralSimConfig(**TINY)
    frame = torch.rand(2, 3, 32, 32)
    next_frame, next_state = NeuralDynamics(cfg)(frame, frame, torch.zeros(2, 7), torch.zeros(2, 7))
    torch.testing.assert_close(next_frame, frame)  # zero-initialised head: no flow, no residual
    assert next_state.shape == (2, 7)
    out = FrameProbe(cfg)(frame)
    assert out.state.shape == (2, 7) and out.env_state.shape == (2, 8) and out.success_logit.shape == (2,)
    with pytest.raises(ValueError, match="not divisible by 2\\*\\*levels"):
        NeuralSimConfig(image_size=36, levels=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny simulator trained for a few steps on 3 generated rollouts of one task: its run folder."""
    from data.generate import close_envs
    from data.generate_rollouts import generate_rollouts
    from world_model.train_neural_sim import train

    root = tmp_path_factory.mktemp("neural_sim")
    task = OmegaConf.create(
        {"tasks": ["stack_block"], "image_size": 32, "fps": 5, "image_key": "observation.images.image"}
    )
    kinds = [
        {"name": "expert", "policy": "expert", "noise": 0.005, "weight": 1},
        {"name": "random", "policy": "random", "weight": 1},
    ]
    rollouts = OmegaConf.create({"episodes": 3, "protocol": "visual_matching", "seed": 5, "kinds": kinds})
    try:
        out = generate_rollouts(rollouts, task, root / "rollouts")
    finally:
        close_envs()
    assert out["frames"] == 3 * 60
    cfg = OmegaConf.create(
        {
            "task": task,
            "model": {"neural_sim": TINY},
            "train": {
                "neural_sim": {
                    "dataset": str(root / "rollouts"), "out_dir": str(root / "run"), "resume": True, "seed": 0,
                    "device": "cpu", "steps": 3, "batch_size": 2, "unroll": 2, "lr": 1e-3, "lr_warmup": 1,
                    "weight_decay": 0.0, "grad_clip": 1.0, "val_fraction": 0.34, "log_every": 1, "val_every": 3,
                    "ckpt_every": 3, "loss": {"frame": 1.0, "state": 1.0, "probe": 1.0},
                }
            },
        }
    )  # fmt: skip
    summary = train(cfg)
    assert summary["steps"] == 3 and np.isfinite(summary["psnr_last"])
    cfg.train.neural_sim.steps = 4
    assert train(cfg)["resumed_at"] == 3
    return root / "run"


def test_fixed_seeds_give_identical_rollouts_and_the_env_checker_passes(trained):
    from gymnasium.utils.env_checker import check_env

    from world_model.neural_env import NeuralTabletopEnv

    env = NeuralTabletopEnv("stack_block", image_size=32, checkpoint=str(trained), max_episode_steps=5)
    try:
        actions = np.random.default_rng(0).uniform(env.action_space.low, env.action_space.high, (5, 7))
        runs = []
        for _ in range(2):
            obs, _ = env.reset(seed=11)
            frames = [obs["pixels"]["image"]]
            for a in actions:
                obs, _, _, truncated, info = env.step(a.astype(np.float32))
                frames.append(obs["pixels"]["image"])
            runs.append(np.stack(frames))
        assert truncated and set(info) >= {"is_success", "grasped"}
        np.testing.assert_array_equal(runs[0], runs[1])
        other, _ = env.reset(seed=12)
        assert not np.array_equal(other["pixels"]["image"], runs[0][0])  # another seed, another scene
        check_env(env, skip_render_check=True)
    finally:
        env.close()


class StubSim:
    """Reads fixed probabilities off any frame."""

    def __init__(self, success, grasp):
        self.success, self.grasp = success, grasp

    def step(self, prev, frame, state, action):
        return frame, state

    def read(self, frame):
        return {
            "success": torch.tensor([self.success]),
            "grasp": torch.tensor([self.grasp]),
            "env_state": torch.zeros(1, 8),
        }


def test_the_judge_decides_success_and_grasps_accumulate(trained):
    from world_model.neural_env import NeuralTabletopEnv

    env = NeuralTabletopEnv("stack_block", image_size=32, checkpoint=str(trained))
    try:
        env.reset(seed=0)
        env.sim = StubSim(success=0.7, grasp=0.9)
        _, reward, _, _, info = env.step(np.zeros(7, np.float32))
        assert info["is_success"] and reward == 1.0 and info["grasped_now"]
        env.sim = StubSim(success=0.3, grasp=0.1)
        _, reward, _, _, info = env.step(np.zeros(7, np.float32))
        assert not info["is_success"] and reward == 0.0 and not info["grasped_now"] and info["grasped"]
    finally:
        env.close()


def test_actions_outside_the_training_range_are_clipped_with_a_warning(trained):
    from world_model.train_neural_sim import load_neural_sim

    sim = load_neural_sim(trained)
    inside = (sim.action_low + sim.action_high)[None] / 2
    assert torch.equal(sim.clip_action(inside), inside)
    with pytest.warns(UserWarning, match="outside the neural simulator's training range"):
        clipped = sim.clip_action(inside + 10)
    torch.testing.assert_close(clipped, sim.action_high[None])
    with pytest.raises(FileNotFoundError, match="no neural simulator checkpoint"):
        load_neural_sim(trained.parent / "nowhere")
