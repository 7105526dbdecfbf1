import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim
from sim.env import VARIANT_FACTORS, TabletopEnv
from sim.experts import ExpertController
from sim.tasks import PROTOCOLS, TASKS


@pytest.fixture(scope="module")
def envs():
    made = {}
    yield lambda task, protocol="visual_matching", robot="widowx": made.setdefault(
        (task, protocol, robot), TabletopEnv(task, protocol, robot=robot)
    )
    for env in made.values():
        env.close()


@pytest.mark.parametrize("task", list(TASKS))
def test_gymnasium_env_checker(task):
    env = gym.make(TASKS[task].gym_id, protocol="variant_aggregation")
    try:
        check_env(env.unwrapped, skip_render_check=True)
    finally:
        env.close()


def test_registered_ids_and_instructions():
    for spec in TASKS.values():
        assert spec.gym_id in gym.registry
        assert len(spec.instruction.split()) >= 3
    assert sim.PROTOCOLS == ("visual_matching", "variant_aggregation")


def test_observation_layout(envs):
    env = envs("stack_block")
    obs, info = env.reset(seed=0)
    assert obs["pixels"]["image"].shape == (64, 64, 3) and obs["pixels"]["image"].dtype == np.uint8
    assert obs["agent_pos"].shape == (7,) and obs["environment_state"].shape == (8,)
    assert obs["task"] == "stack the green block on the yellow block"
    assert set(info) == {"is_success", "grasped", "grasped_now", "close_to_source", "close_to_target"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_same_seed_same_observations(protocol):
    a, b = TabletopEnv("carrot_on_plate", protocol), TabletopEnv("carrot_on_plate", protocol)
    actions = (
        np.random.default_rng(0).uniform(a.action_space.low, a.action_space.high, (5, 7)).astype(np.float32)
    )
    try:
        for env in (a, b):
            env.reset(seed=11)
        for action in actions:
            oa, ob = a.step(action)[0], b.step(action)[0]
            np.testing.assert_array_equal(oa["pixels"]["image"], ob["pixels"]["image"])
            np.testing.assert_array_equal(oa["agent_pos"], ob["agent_pos"])
    finally:
        a.close(), b.close()


def test_seeds_and_protocols_change_the_scene(envs):
    nominal = envs("spoon_on_towel")
    variant = envs("spoon_on_towel", "variant_aggregation")
    img0 = nominal.reset(seed=0)[0]["pixels"]["image"]
    img1 = nominal.reset(seed=1)[0]["pixels"]["image"]
    state0, state1 = (
        nominal.reset(seed=0)[0]["environment_state"],
        nominal.reset(seed=1)[0]["environment_state"],
    )
    assert np.abs(state0 - state1)[:2].max() > 1e-3, "object placement must depend on the seed"
    assert not np.array_equal(img0, img1)
    var0 = variant.reset(seed=0)[0]["pixels"]["image"]
    assert np.abs(var0.astype(int) - img0.astype(int)).mean() > 5, (
        "a variant must look different from the nominal scene"
    )
    np.testing.assert_array_equal(var0, variant.reset(seed=0)[0]["pixels"]["image"])


def test_visual_matching_restores_nominal_after_variants(envs):
    env = TabletopEnv("stack_block", "visual_matching")
    try:
        first = env.reset(seed=5)[0]["pixels"]["image"]
        env.protocol = "variant_aggregation"
        env.reset(seed=6)
        env.protocol = "visual_matching"
        np.testing.assert_array_equal(first, env.reset(seed=5)[0]["pixels"]["image"])
    finally:
        env.close()


def test_variant_factors_reset_only_their_own_part_of_the_scene(envs):
    """A factor left out is the full variant scene with that part nominal: without the camera the objects
    stand where they did and the image moves; with no factor the look is the nominal one, one distractor."""
    full = envs("spoon_on_towel", "variant_aggregation")
    no_camera = TabletopEnv(
        "spoon_on_towel", "variant_aggregation", variant_factors=VARIANT_FACTORS[:3] + ("distractors",)
    )
    none = TabletopEnv("spoon_on_towel", "variant_aggregation", variant_factors=[])
    try:
        obs, obs_no_camera = full.reset(seed=3)[0], no_camera.reset(seed=3)[0]
        np.testing.assert_array_equal(obs["environment_state"], obs_no_camera["environment_state"])
        assert np.abs(obs["pixels"]["image"].astype(int) - obs_no_camera["pixels"]["image"]).mean() > 2
        for seed in range(4):
            none.reset(seed=seed)
            for key in ("light_diffuse", "light_dir", "mat_rgba", "geom_matid", "cam_fovy"):
                np.testing.assert_array_equal(getattr(none.model, key), none._nominal[key], err_msg=key)
            placed = [n for n in none._objects[2:] if none.data.body(n).xpos[0] < 1]  # parked at x = 3
            assert len(placed) == 1, placed
    finally:
        no_camera.close(), none.close()
    with pytest.raises(ValueError, match=r"unknown variant_factors \['fog'\]"):
        TabletopEnv("spoon_on_towel", variant_factors=["camera", "fog"])


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_expert_succeeds(envs, task, protocol):
    env = envs(task, protocol)
    for seed in (101, 202):
        obs, info = env.reset(seed=seed)
        expert = ExpertController(env.spec_task)
        for _ in range(env.max_episode_steps):
            obs, reward, terminated, truncated, info = env.step(
                expert.act(obs["agent_pos"], obs["environment_state"])
            )
        assert truncated and not terminated
        assert info["grasped"] and info["is_success"], f"expert failed {task} {protocol} seed {seed}"
        assert reward == 1.0
        # It first closed its gripper over the object to pick, not over the target.
        assert info["close_to_source"] < 0.015 < info["close_to_target"]


def test_second_embodiment_succeeds_and_looks_different(envs):
    hand, robot = envs("carrot_on_plate", robot="hand"), envs("carrot_on_plate")
    obs, _ = hand.reset(seed=3)
    assert np.abs(obs["pixels"]["image"].astype(int) - robot.reset(seed=3)[0]["pixels"]["image"]).mean() > 1
    expert = ExpertController(hand.spec_task)
    for _ in range(hand.max_episode_steps):
        obs, _, _, _, info = hand.step(expert.act(obs["agent_pos"], obs["environment_state"]))
    assert info["is_success"]


def test_idle_policy_neither_grasps_nor_succeeds(envs):
    env = envs("eggplant_in_basket")
    env.reset(seed=0)
    for _ in range(10):
        info = env.step(np.zeros(7, dtype=np.float32))[4]
    assert not info["grasped"] and not info["is_success"]
    assert np.isnan(info["close_to_source"]) and np.isnan(info["close_to_target"])


@pytest.mark.parametrize(
    "action, match",
    [
        (np.zeros(6), r"shape \(7,\)"),
        (np.zeros((1, 7)), r"shape \(7,\)"),
        (np.array([0, 0, np.nan, 0, 0, 0, 0]), "finite"),
        (np.array([0, 0, 0, 0, 0, np.inf, 1]), "finite"),
    ],
)
def test_bad_actions_raise(envs, action, match):
    env = envs("spoon_on_towel")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(action)


def test_bad_construction_raises():
    with pytest.raises(ValueError, match="unknown task 'fold_towel'.*expected one of"):
        TabletopEnv("fold_towel")
    with pytest.raises(ValueError, match="unknown protocol"):
        TabletopEnv("spoon_on_towel", protocol="real")
    with pytest.raises(ValueError, match="unknown robot"):
        TabletopEnv("spoon_on_towel", robot="panda")


def test_bad_image_size_and_rate_raise():
    with pytest.raises(ValueError, match="even int"):
        TabletopEnv("spoon_on_towel", image_size=65)
    with pytest.raises(ValueError, match="control_hz"):
        TabletopEnv("spoon_on_towel", control_hz=0)


def test_drawn_arm_follows_the_hand(envs):
    env = envs("stack_block")
    env.reset(seed=0)
    env.step(np.array([0.05, 0.05, -0.05, 0, 0, 0.3, 0], dtype=np.float32))
    m, d = env.model, env.data
    for link in ("upper_arm", "forearm", "wrist_link"):
        body = m.body(link).id
        np.testing.assert_allclose(d.xpos[body], d.mocap_pos[m.body_mocapid[body]], atol=1e-9)
    wrist_end = d.xpos[m.body("wrist_link").id] + d.xmat[m.body("wrist_link").id].reshape(3, 3)[:, 2] * 0.04
    np.testing.assert_allclose(wrist_end, d.xpos[m.body("hand").id], atol=1e-6)


def test_render_before_reset_raises():
    env = TabletopEnv("spoon_on_towel")
    with pytest.raises(RuntimeError, match="reset"):
        env.render()
