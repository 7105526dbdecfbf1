"""The neural simulator: its warp, its parts untrained, the judge learning a hand-made rule, training on
generated rollouts, the gymnasium env around it (fixed seeds give identical rollouts; gymnasium's
checker), the env's reading of the judge and the clipping of unseen actions."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from world_model.neural_sim import (
    COND_DIM,
    REL_DIM,
    WORLD_DIM,
    NeuralSimConfig,
    SuccessJudge,
    build_modules,
    relative_features,
    warp,
)

TINY = {
    "image_size": 32, "width": 8, "levels": 2, "blocks": 1, "cond_dim": 16, "probe_width": 8,
    "state_width": 16, "state_layers": 1,
}  # fmt: skip


def test_warp_moves_pixels_by_the_flow():
    frame = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(warp(frame, torch.zeros(1, 2, 8, 8)), frame)
    shifted = warp(frame, torch.stack([torch.ones(8, 8), torch.zeros(8, 8)])[None])  # out(x) = in(x + 1)
    torch.testing.assert_close(shifted[..., :-1], frame[..., 1:])


def test_untrained_models_keep_the_world_as_it_is():
    cfg = NeuralSimConfig(**TINY)
    parts = build_modules(cfg)
    frame = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(parts["dynamics"](frame, frame, torch.randn(2, COND_DIM)), frame)  # zero head
    world, action = torch.randn(2, WORLD_DIM), torch.randn(2, 14)
    rel = relative_features(world)
    assert rel.shape == (2, REL_DIM)
    robot_change, attach_logit, free_change = parts["states"](world, action, rel)
    assert torch.equal(robot_change, torch.zeros(2, 7)) and torch.equal(free_change, torch.zeros(2, 8))
    assert (torch.sigmoid(attach_logit) < 0.05).all()  # nothing held yet
    success, grasp = parts["judge"](world, rel)
    assert success.shape == grasp.shape == (2,)
    assert parts["probe"](frame).shape == (2, WORLD_DIM)
    with pytest.raises(ValueError, match="not divisible by 2\\*\\*levels"):
        NeuralSimConfig(image_size=36, levels=3)


def test_relative_features_see_the_geometry_of_a_grasp():
    world = torch.zeros(2, WORLD_DIM)
    world[:, 7:10] = torch.tensor([0.3, 0.1, 0.02])  # source object
    world[:, 11:14] = torch.tensor([0.3, 0.1, 0.0])  # target under it
    world[1, 5] = torch.pi  # the hand turned half a turn: the same grasp for two fingers
    rel = relative_features(world)
    torch.testing.assert_close(rel[:, :3], torch.tensor([[3.0, 1.0, 0.2]] * 2))  # hand to object, dm
    torch.testing.assert_close(rel[:, 3:6], torch.tensor([[0.0, 0.0, -0.2]] * 2))
    torch.testing.assert_close(rel[0], rel[1], atol=1e-5, rtol=0)


def test_the_judge_learns_a_hand_made_success_rule():
    """Success iff the object is within 3 cm of its target and the gripper is open: the judge must learn
    it from 512 labelled states and apply it to states it has not seen."""
    gen = torch.Generator().manual_seed(0)

    def labelled(n):
        world = torch.rand(n, WORLD_DIM, generator=gen) * 0.2
        near = torch.rand(n, generator=gen) < 0.5  # half the objects near their target
        world[near, 7:10] = world[near, 11:14] + (torch.rand(int(near.sum()), 3, generator=gen) - 0.5) * 0.04
        success = ((world[:, 7:10] - world[:, 11:14]).norm(dim=-1) < 0.03) & (world[:, 6] < 0.1)
        return world, success.float()

    judge = SuccessJudge(NeuralSimConfig(**TINY | {"state_width": 64}))
    optimizer = torch.optim.Adam(judge.parameters(), lr=3e-3)
    world, success = labelled(512)
    for _ in range(400):
        logit, _ = judge(world, relative_features(world))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, success)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test_world, test_success = labelled(256)
    with torch.no_grad():
        logit, _ = judge(test_world, relative_features(test_world))
    assert 0.2 < test_success.mean() < 0.5  # both verdicts are common
    assert ((logit > 0).float() == test_success).float().mean() > 0.9


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
                    "device": "cpu", "state_steps": 2, "state_batch": 4, "state_unroll": 3, "steps": 2,
                    "batch_size": 2, "unroll": 2, "lr": 1e-3, "lr_warmup": 1, "weight_decay": 0.0,
                    "grad_clip": 1.0, "val_fraction": 0.34, "log_every": 1, "val_every": 3, "ckpt_every": 3,
                    "loss": {"state": 1.0, "attach": 1.0, "judge": 1.0, "frame": 1.0, "probe": 1.0},
                }
            },
        }
    )  # fmt: skip
    summary = train(cfg)
    assert summary["steps"] == 4 and np.isfinite(summary["psnr_last"]) and np.isfinite(summary["object_cm"])
    cfg.train.neural_sim.steps = 3
    assert train(cfg)["resumed_at"] == 4
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
    """Keeps the world as it is and judges every state with fixed probabilities."""

    def __init__(self, success, grasp):
        self.success, self.grasp = success, grasp

    def clip_action(self, action):
        return action

    def step(self, prev, frame, world, action, last_action):
        return frame, world

    def judge_state(self, world):
        return {"success": torch.tensor([self.success]), "grasp": torch.tensor([self.grasp])}


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


def test_throughput_probe_times_both_profiles_configs_on_cpu():
    from world_model.neural_sim_throughput import load_profile, measure

    assert (
        load_profile("gpu")["image_size"] == 128
        and load_profile("gpu")["width"] > load_profile("cpu")["width"]
    )
    result = measure("cpu", "cpu", envs=[1, 2], repeats=1, train_batch=2)
    assert [r["envs"] for r in result["imagined"]] == [1, 2]
    assert (
        all(r["frames_per_s"] > 0 for r in result["imagined"]) and result["train_samples_per_s"]["fp32"] > 0
    )
