"""The neural simulator: its warp, its parts untrained, the judge learning a hand-made rule, training on
generated rollouts, the gymnasium env around it (fixed seeds give identical rollouts; gymnasium's
checker), the env's reading of the judge and the clipping of unseen actions."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from world_model.neural_sim.model import (
    COND_DIM,
    GEO_DIM,
    WORLD_DIM,
    NeuralSimConfig,
    SuccessJudge,
    build_modules,
    geometry_features,
    warp,
)

TINY = {
    "image_size": 32, "width": 8, "levels": 2, "blocks": 1, "cond_dim": 16, "probe_width": 8,
    "state_width": 16, "state_layers": 1,
}  # fmt: skip
TINY_TASK = {"tasks": ["stack_block"], "image_size": 32, "fps": 5, "image_key": "observation.images.image"}


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
    geo = geometry_features(world)
    assert geo.shape == (2, GEO_DIM)
    robot_change, attach_logit, free_change = parts["states"](world, action, geo)
    assert torch.equal(robot_change, torch.zeros(2, 7)) and torch.equal(free_change, torch.zeros(2, 8))
    assert (torch.sigmoid(attach_logit) < 0.05).all()  # nothing held yet
    success, grasp = parts["judge"](world, geo)
    assert success.shape == grasp.shape == (2,)
    assert parts["probe"](frame).shape == (2, WORLD_DIM)
    with pytest.raises(ValueError, match="not divisible by 2\\*\\*levels"):
        NeuralSimConfig(image_size=36, levels=3)


def test_an_untrained_renderer_draws_the_first_frame_and_names_are_checked():
    renderer = build_modules(NeuralSimConfig(**TINY, video="render"))["dynamics"]
    first = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(renderer(first, torch.randn(2, COND_DIM)), first)  # zero head
    assert renderer.stem.conv.in_channels == 5  # the frame and two coordinate channels
    with pytest.raises(ValueError, match="video model 'diffusion' is not one of"):
        NeuralSimConfig(**TINY, video="diffusion")


def test_geometry_features_see_a_grasp():
    world = torch.zeros(2, WORLD_DIM)
    world[:, 7:10] = torch.tensor([0.3, 0.1, 0.02])  # source object
    world[:, 11:14] = torch.tensor([0.3, 0.1, 0.0])  # target under it
    world[1, 5] = torch.pi  # the hand turned half a turn: the same grasp for two fingers
    geo = geometry_features(world)
    torch.testing.assert_close(geo[:, :3], torch.tensor([[3.0, 1.0, 0.2]] * 2))  # hand to object, dm
    torch.testing.assert_close(geo[:, 3:6], torch.tensor([[0.0, 0.0, -0.2]] * 2))
    torch.testing.assert_close(geo[0], geo[1], atol=1e-5, rtol=0)


UNIT_STATS = {"world": {"mean": [0.0] * WORLD_DIM, "std": [1.0] * WORLD_DIM}}  # raw = normalised


class FixedStateModel(torch.nn.Module):
    """Answers every state with the same robot change, attachment logit and free object change."""

    def __init__(self, robot_change, attach_logit, free_change=None):
        super().__init__()
        self.out = torch.tensor([robot_change]), torch.tensor([[attach_logit]]), torch.zeros(1, 8)
        if free_change is not None:
            self.out = (*self.out[:2], torch.tensor([free_change]))

    def forward(self, world, actions, geo):
        assert world.shape == (1, WORLD_DIM) and actions.shape == (1, 14) and geo.shape == (1, GEO_DIM)
        return self.out


def test_state_step_carries_a_held_object_turns_it_and_wraps_its_yaw():
    from world_model.neural_sim.dynamics import state_step, world_error

    world = torch.zeros(1, WORLD_DIM)
    world[0, :3] = torch.tensor([0.3, 0.0, 0.1])  # hand
    world[0, 7:11] = torch.tensor([0.4, 0.0, 0.05, 3.0])  # source 10 cm ahead of the hand, yaw 3.0
    world[0, 11:15] = torch.tensor([0.2, 0.2, 0.0, 1.0])  # target
    move = [0.02, 0.0, 0.01, 0.0, 0.0, 0.5, 2.0]  # the hand moves and turns half a radian; closure overshoots
    action = torch.zeros(1, 7)
    held, _ = state_step(FixedStateModel(move, 30.0), world, action, action, UNIT_STATS)
    turned = 0.1 * torch.tensor([np.cos(0.5), np.sin(0.5)], dtype=torch.float32)
    torch.testing.assert_close(
        held[0, 7:9], torch.tensor([0.32, 0.0]) + turned
    )  # carried and turned about the hand
    torch.testing.assert_close(held[0, 9], torch.tensor(0.06))
    torch.testing.assert_close(held[0, 10], torch.tensor(3.5 - 2 * np.pi, dtype=torch.float32))  # wrapped
    torch.testing.assert_close(held[0, 11:], world[0, 11:])  # the target stays
    assert held[0, 6] == 1.0  # the gripper closure stays within [0, 1]
    free, _ = state_step(
        FixedStateModel(move, -30.0, [0, 0, -0.01, 0, 0, 0, 0, 0]), world, action, action, UNIT_STATS
    )
    torch.testing.assert_close(
        free[0, 7:11], torch.tensor([0.4, 0.0, 0.04, 3.0])
    )  # not held: only its own change
    # Errors on yaws go the short way round: 3.1 against -3.1 is 0.08 rad apart, not 6.2.
    a, b = world.clone(), world.clone()
    a[0, 10], b[0, 10] = 3.1, -3.1
    torch.testing.assert_close(
        world_error(a, b, UNIT_STATS)[0, 10], torch.tensor(6.2 - 2 * np.pi, dtype=torch.float32)
    )


def test_sequences_start_with_a_zero_action_and_skip_objects_off_the_table():
    from data.chunks import EpisodeBank
    from world_model.neural_sim.dynamics import ACTION, ENV_STATE, GRASP, STATE, SUCCESS
    from world_model.neural_sim.train import make_sequences, start_rows

    F = 10  # two episodes of 5 frames
    env_state = torch.tensor([[0.3, 0.0, 0.02, 0.0, 0.3, 0.1, 0.0, 0.0]]).repeat(F, 1)
    env_state[8, 2] = -0.5  # frame 3 of the second episode: the source fell off the table
    columns = {
        STATE: torch.zeros(F, 7), ENV_STATE: env_state, ACTION: torch.arange(F, dtype=torch.float32)[:, None].repeat(1, 7),
        SUCCESS: torch.zeros(F, 1), GRASP: torch.zeros(F, 1),
    }  # fmt: skip
    bank = EpisodeBank.from_arrays(
        torch.zeros(F, 3, 8, 8, dtype=torch.uint8), columns, torch.tensor([0] * 5 + [1] * 5), ["t"] * F
    )
    assert start_rows(bank, 2).tolist() == [0, 1, 2, 9 - 4]  # windows through row 8 are left out
    stats = {ACTION: {"mean": [0.0] * 7, "std": [1.0] * 7}}
    seq = make_sequences(bank, torch.tensor([0, 2, 5]), 2, stats, frames=False)
    assert seq.last_action[:, 0].tolist() == [0.0, 1.0, 0.0]  # zero at each episode's start
    assert seq.action[:, :, 0].tolist() == [[0.0, 1.0], [2.0, 3.0], [5.0, 6.0]]


def test_learning_rate_warms_up_then_falls_to_a_tenth():
    from world_model.neural_sim.train import phase_schedule

    assert phase_schedule(0, 100, warmup=10) == pytest.approx(0.1, rel=0.01)
    assert phase_schedule(9, 100, warmup=10) == pytest.approx(0.98, rel=0.01)
    assert phase_schedule(100, 100, warmup=10) == pytest.approx(0.1)


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
        logit, _ = judge(world, geometry_features(world))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, success)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test_world, test_success = labelled(256)
    with torch.no_grad():
        logit, _ = judge(test_world, geometry_features(test_world))
    assert 0.2 < test_success.mean() < 0.5  # both verdicts are common
    assert ((logit > 0).float() == test_success).float().mean() > 0.9


def tiny_config(task, rollouts, out_dir, **model):
    """A tiny simulator's training config: two state steps, then two frame steps."""
    return OmegaConf.create(
        {
            "task": task,
            "model": {"neural_sim": TINY | model},
            "train": {
                "neural_sim": {
                    "dataset": str(rollouts), "out_dir": str(out_dir), "resume": True, "seed": 0,
                    "device": "cpu", "state_steps": 2, "state_batch": 4, "state_unroll": 3, "steps": 2,
                    "batch_size": 2, "unroll": 2, "lr": 1e-3, "lr_warmup": 1, "weight_decay": 0.0,
                    "grad_clip": 1.0, "val_fraction": 0.34, "log_every": 1, "val_every": 3, "ckpt_every": 3,
                    "loss": {"state": 1.0, "attach": 1.0, "judge": 1.0, "frame": 1.0, "probe": 1.0},
                }
            },
        }
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny simulator trained for a few steps on 3 generated rollouts of one task: its run folder."""
    from data.generate import close_envs
    from data.generate_rollouts import generate_rollouts
    from world_model.neural_sim.train import train

    root = tmp_path_factory.mktemp("neural_sim")
    task = OmegaConf.create(TINY_TASK)
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
    cfg = tiny_config(task, root / "rollouts", root / "run")
    cfg.train.neural_sim.steps = 0  # stop where the state phase ends
    summary = train(cfg)
    assert summary["steps"] == 2 and np.isfinite(summary["object_cm"])
    cfg.train.neural_sim.steps = 2  # resume into the video phase
    summary = train(cfg)
    assert summary["resumed_at"] == 2 and summary["steps"] == 4 and np.isfinite(summary["psnr_last"])
    cfg.train.neural_sim.state_steps = 3
    with pytest.raises(ValueError, match="state_steps=2, not 3"):
        train(cfg)
    cfg.train.neural_sim.state_steps = 2
    return root / "run"


def test_fixed_seeds_give_identical_rollouts_and_the_env_checker_passes(trained):
    from gymnasium.utils.env_checker import check_env

    from world_model.neural_sim.env import NeuralTabletopEnv

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
    """Keeps the world as it is, judges every state with fixed probabilities, and records the actions."""

    def __init__(self, success, grasp):
        self.success, self.grasp, self.calls = success, grasp, []

    def clip_action(self, action):
        return action.clamp(max=0.5)

    def start(self, frame, world):
        return frame, frame

    def step(self, context, world, action, last_action):
        self.calls.append((action, last_action))
        return context[1], world, context

    def judge_state(self, world):
        return {"success": torch.tensor([self.success]), "grasp": torch.tensor([self.grasp])}


def test_a_renderer_trains_and_draws_every_frame_from_the_first(trained):
    """`video: render`: trained on the same rollouts, its env runs; the context stays the first frame and
    state, so no drawn frame feeds back."""
    from world_model.neural_sim.env import NeuralTabletopEnv
    from world_model.neural_sim.train import train

    run = trained.parent / "render"
    summary = train(tiny_config(TINY_TASK, trained.parent / "rollouts", run, video="render"))
    assert summary["steps"] == 4 and np.isfinite(summary["psnr_last"])
    env = NeuralTabletopEnv("stack_block", image_size=32, checkpoint=str(run), max_episode_steps=3)
    try:
        assert env.sim.renders
        obs, _ = env.reset(seed=3)
        first = env._context
        for _ in range(3):
            obs, *_ = env.step(np.zeros(7, np.float32))
        assert env._context is first
        assert obs["pixels"]["image"].shape == (32, 32, 3)
    finally:
        env.close()


def test_the_env_reads_the_judge_and_passes_the_clipped_action_before(trained):
    from world_model.neural_sim.env import NeuralTabletopEnv

    env = NeuralTabletopEnv("stack_block", image_size=32, checkpoint=str(trained))
    try:
        env.reset(seed=0)
        env.sim = StubSim(success=0.7, grasp=0.9)
        _, reward, _, _, info = env.step(np.full(7, 0.9, np.float32))
        assert info["is_success"] and reward == 1.0 and info["grasped_now"]
        env.sim = sim = StubSim(success=0.3, grasp=0.1)
        _, reward, _, _, info = env.step(np.full(7, 0.2, np.float32))
        assert not info["is_success"] and reward == 0.0 and not info["grasped_now"] and info["grasped"]
        env.reset(seed=0)
        env.step(np.full(7, 0.1, np.float32))
        (action, before), (_, after_reset) = sim.calls
        assert torch.equal(action, torch.full((1, 7), 0.2))
        assert torch.equal(before, torch.full((1, 7), 0.5))  # the action before, as clipped at its step
        assert torch.equal(after_reset, torch.zeros(1, 7))
    finally:
        env.close()


def test_a_replay_moves_the_world_as_the_env_does_under_the_same_actions(trained):
    """bench.neural_sim_replay: episodes recorded in the neural env (2 envs, 3 episodes: a short last
    wave), replayed open loop from their first states, end in the env's last states and verdicts."""
    import functools

    import gymnasium as gym

    from bench.neural_sim_replay import record_episodes, replay, split_gap
    from sim.experts import ScriptedPolicy
    from world_model.neural_sim.env import NeuralTabletopEnv
    from world_model.neural_sim.simulator import load_neural_sim

    make = functools.partial(
        NeuralTabletopEnv, "stack_block", image_size=32, checkpoint=str(trained), max_episode_steps=6
    )
    envs = gym.vector.SyncVectorEnv([make] * 2, autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    try:
        run = record_episodes(ScriptedPolicy(task="stack_block", noise=0.05), envs, 3, 6, seed=40)
    finally:
        envs.close()
    assert (
        run["first"].shape == (3, 15) and run["actions"].shape == (3, 6, 7) and run["success"].shape == (3,)
    )
    last, verdicts = replay(load_neural_sim(trained), run["first"], run["actions"])
    np.testing.assert_allclose(last.numpy(), run["last"], atol=1e-5)
    assert verdicts.tolist() == run["success"].tolist()
    gap = split_gap(np.array([True, False, False]), np.array([False, True, True]))
    assert (gap["lenient"], gap["strict"], gap["replayed"]) == (2, 1, 2 / 3)


def test_disagreements_blame_the_judge_only_where_the_tasks_own_test_disagrees_with_it():
    from bench.neural_sim_replay import disagreements, placed
    from sim.tasks import get_task

    spoon = np.zeros(15, np.float32)
    spoon[7:10], spoon[11:14] = [0.57, 0.17, 0.02], [0.5, 0.1, 0.01]  # 7 cm off the towel's centre in x, y
    assert placed(get_task("spoon_on_towel"), spoon)  # inside the towel's 7.5 cm square ...
    spoon[14] = np.pi / 4
    assert not placed(get_task("spoon_on_towel"), spoon)  # ... not once the towel turns 45 degrees

    task = get_task("carrot_on_plate")
    on = np.zeros(15, np.float32)
    on[7:10], on[11:14] = [0.5, 0.1, 0.03], [0.5, 0.1, 0.01]  # the carrot 2 cm above the plate's centre
    off = on.copy()
    off[7:9] = [0.3, -0.1]
    run = {
        "first": np.stack([off] * 3),
        "last": np.stack([off, off, on]),
        "success": np.array([False, False, True]),
    }
    found = disagreements(task, run, np.stack([on, off, off]), np.array([True, True, False]))
    assert [(d["episode"], d["kind"], d["cause"]) for d in found] == [
        (0, "lenient", "state"),  # the state model put the carrot on the plate: the judge read it right
        (1, "lenient", "judge"),  # the carrot is off the plate and the judge still says success
        (2, "strict", "state"),
    ]
    assert (found[0]["object_moved_cm"], found[0]["object_error_cm"]) == (0.0, 28.3)


def test_the_rollouts_replay_counts_each_episode_under_the_kind_that_drove_it(trained):
    import collections
    import json

    from bench.neural_sim_replay import replay_rollouts
    from data.generate_rollouts import KINDS_FILE, draw_kinds
    from world_model.neural_sim.simulator import load_neural_sim

    rollouts = trained.parent / "rollouts"
    found = replay_rollouts(load_neural_sim(trained), tiny_config(TINY_TASK, rollouts, trained))
    record = OmegaConf.create(json.loads((rollouts / KINDS_FILE).read_text()))
    drawn = collections.Counter(kind.name for kind, _ in draw_kinds(record))
    assert {k: sum(s["episodes"] for s in v.values()) for k, v in found.items()} == drawn
    assert sum(s.get("held_out", {}).get("episodes", 0) for s in found.values()) == 1  # a third of 3


def test_actions_outside_the_training_range_are_clipped_with_a_warning(trained):
    from world_model.neural_sim.simulator import load_neural_sim

    sim = load_neural_sim(trained)
    inside = (sim.action_low + sim.action_high)[None] / 2
    assert torch.equal(sim.clip_action(inside), inside)
    with pytest.warns(UserWarning, match="outside the neural simulator's training range"):
        clipped = sim.clip_action(inside + 10)
    torch.testing.assert_close(clipped, sim.action_high[None])
    with pytest.raises(FileNotFoundError, match="no neural simulator checkpoint"):
        load_neural_sim(trained.parent / "nowhere")


def test_throughput_probe_reads_both_profiles_and_times_the_cpu_one():
    from bench.neural_sim_throughput import load_profile, measure

    assert (
        load_profile("gpu")["image_size"] == 128
        and load_profile("gpu")["width"] > load_profile("cpu")["width"]
    )
    result = measure("cpu", "cpu", envs=[1, 2], repeats=1)
    assert [r["envs"] for r in result["imagined"]] == [1, 2]
    assert all(r["frames_per_s"] > 0 for r in result["imagined"])


def test_rollouts_accept_a_trained_policy_as_controller(tmp_path):
    """GE-Sim's recipe: a checkpoint drives the rollouts the simulator trains on, from its camera, state and
    instruction; the dataset records the very actions it chose (its first one recomputed from the stored
    first frame with the same noise)."""
    from data.dataset import load_dataset
    from data.generate import close_envs
    from data.generate_rollouts import generate_rollouts, make_controller
    from policies.vipra import VipraPolicy, make_policy
    from tests.policies.tiny import save_trained, tiny_config

    torch.manual_seed(0)
    save_trained(VipraPolicy(tiny_config()).eval(), tmp_path / "policy")
    task = OmegaConf.create({"tasks": ["stack_block"], "image_size": 32, "fps": 5})
    learned = {"_target_": "policies.vipra.make_policy", "_partial_": True, "path": str(tmp_path / "policy")}
    kinds = [{"name": "tiny_policy", "policy": learned, "weight": 1}]
    rollouts = OmegaConf.create({"episodes": 2, "protocol": "visual_matching", "seed": 5, "kinds": kinds})
    torch.manual_seed(1)
    try:
        out = generate_rollouts(rollouts, task, tmp_path / "rollouts")
    finally:
        close_envs()
    assert out["frames"] == 2 * 60 and set(out["successes"]) == {"tiny_policy"}

    first = load_dataset(tmp_path / "rollouts")[0]
    torch.manual_seed(1)  # as before the run: loading the policy, then its first chunk's noise
    policy = make_policy(tmp_path / "policy")
    batch = {
        "observation.images.image": first["observation.images.image"][None],
        "observation.state": first["observation.state"][None],
        "task": [first["task"]],
    }
    with torch.inference_mode():
        expected = policy.select_action(batch)[0]
    torch.testing.assert_close(first["action"], expected, rtol=0, atol=1e-5)

    bad = OmegaConf.create({"name": "bad", "policy": "ours", "weight": 1})
    with pytest.raises(ValueError, match="not 'expert', 'random' or a policy factory"):
        make_controller(bad, "stack_block", np.random.default_rng(0))


def test_rollouts_refuse_a_missing_checkpoint_before_the_first_episode(tmp_path):
    """A kind naming a checkpoint that was never trained fails at once, naming the kind and the path, and
    writes no dataset (not hundreds of episodes in)."""
    from data.generate_rollouts import generate_rollouts

    missing = tmp_path / "policy" / "ours-seed9" / "pretrained_model"
    kinds = [
        {"name": "expert", "policy": "expert", "noise": 0.005, "weight": 1},
        {"name": "ours_seed9", "weight": 1,
         "policy": {"_target_": "policies.vipra.make_policy", "_partial_": True, "path": str(missing)}},
    ]  # fmt: skip
    rollouts = OmegaConf.create({"episodes": 2, "protocol": "visual_matching", "seed": 5, "kinds": kinds})
    task = OmegaConf.create({"tasks": ["stack_block"], "image_size": 32, "fps": 5})
    with pytest.raises(FileNotFoundError, match=f"ours_seed9: {missing}"):
        generate_rollouts(rollouts, task, tmp_path / "rollouts")
    assert not (tmp_path / "rollouts").exists()


def test_rollouts_of_other_kinds_are_refused_not_reused(tmp_path):
    """The folder records what generated it; asking for other controllers (or seed, or count) over it is an
    error naming what differs, and a folder without the record is warned about."""
    from data.generate import close_envs
    from data.generate_rollouts import KINDS_FILE, check_generated_with, generate_rollouts

    kinds = [{"name": "expert", "policy": "expert", "noise": 0.005, "weight": 1}]
    rollouts = OmegaConf.create({"episodes": 1, "protocol": "visual_matching", "seed": 5, "kinds": kinds})
    task = OmegaConf.create({"tasks": ["stack_block"], "image_size": 32, "fps": 5})
    try:
        generate_rollouts(rollouts, task, tmp_path / "rollouts")
    finally:
        close_envs()
    check_generated_with(tmp_path / "rollouts", rollouts)  # the same request: accepted

    other = OmegaConf.merge(rollouts, {"kinds": [{"name": "random", "policy": "random", "weight": 1}]})
    with pytest.raises(ValueError, match=r"generated with other kinds than data.rollouts asks for .*random"):
        check_generated_with(tmp_path / "rollouts", other)
    (tmp_path / "rollouts" / KINDS_FILE).unlink()
    with pytest.warns(UserWarning, match="what generated it is unknown"):
        check_generated_with(tmp_path / "rollouts", rollouts)


def test_rollouts_from_retrained_checkpoints_are_refused(tmp_path):
    """A kind names its policy by path: a policy retrained at the same path (a new make results) is another
    controller, and the record of its weights tells the two apart."""
    import json

    from data.generate_rollouts import KINDS_FILE, check_generated_with, kinds_record

    checkpoint = tmp_path / "ours" / "pretrained_model"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"weights of the first run")
    policy = {"_target_": "policies.vipra.make_policy", "_partial_": True, "path": str(checkpoint)}
    kinds = [
        {"name": "expert", "policy": "expert", "weight": 1},
        {"name": "ours", "policy": policy, "weight": 1},
    ]
    rollouts = OmegaConf.create({"episodes": 1, "protocol": "visual_matching", "seed": 5, "kinds": kinds})
    (tmp_path / "rollouts").mkdir()
    (tmp_path / "rollouts" / KINDS_FILE).write_text(json.dumps(kinds_record(rollouts)))
    assert set(kinds_record(rollouts)["checkpoints"]) == {"ours"}  # the expert has no weights
    check_generated_with(tmp_path / "rollouts", rollouts)

    (checkpoint / "model.safetensors").write_bytes(b"weights of a second run")
    with pytest.raises(ValueError, match="generated with other checkpoints"):
        check_generated_with(tmp_path / "rollouts", rollouts)


def test_a_simulator_of_other_rollouts_is_refused(trained, tmp_path):
    """The simulator's summary records what generated its rollouts and its steps; rollouts regenerated since
    (other kinds, or retrained checkpoints) or another schedule make it stale, and the bench refuses it."""
    import json
    import shutil

    from bench.neural_sim import check_trained_on
    from data.generate_rollouts import KINDS_FILE, generated_with

    rollouts = trained.parent / "rollouts"
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["rollouts"] == generated_with(rollouts) is not None
    steps = summary["steps"]
    check_trained_on(trained, rollouts, steps)
    with pytest.raises(ValueError, match=f"trained for {steps} steps, the config asks for {steps + 1}"):
        check_trained_on(trained, rollouts, steps + 1)  # another schedule: retrain, never reuse

    regenerated = tmp_path / "rollouts"
    regenerated.mkdir()
    shutil.copy(rollouts / KINDS_FILE, regenerated / KINDS_FILE)
    record = json.loads((regenerated / KINDS_FILE).read_text())
    (regenerated / KINDS_FILE).write_text(json.dumps(record | {"seed": record["seed"] + 1}))
    with pytest.raises(ValueError, match="trained on other rollouts"):
        check_trained_on(trained, regenerated, steps)
