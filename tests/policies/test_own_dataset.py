"""Any LeRobotDataset in, any LeRobot tool out. A dataset written here with lerobot's own API, unlike the
suite's (a camera named `observation.images.corner2` at 96x96, 4-d state and action, 20 fps, Meta-World
instructions), trains through both trainers; both policies evaluate through the project's harness on
Meta-World with the matching camera. A tabletop policy of the project's trainer loads with lerobot's
`make_policy` and runs in `lerobot-eval`. Bad datasets and mismatched envs are refused by name."""

import functools
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from policies.vipra import VipraConfig, VipraPolicy, make_policy
from tests.policies.lerobot_cli import lerobot_eval_one_episode
from tests.policies.tiny import tiny_config

CAMERA, SIZE, DIM, FPS = "observation.images.corner2", 96, 4, 20
TINY_POLICY = [
    "model.policy.chunk_size=6", "model.policy.n_action_steps=3", "model.policy.dim=32", "model.policy.heads=2",
    "model.policy.layers=1", "model.backbone.dim=32", "model.backbone.heads=2", "model.backbone.layers=1",
    "model.backbone.horizon=6", "train.policy.steps=2", "train.policy.batch_size=4", "train.policy.backbone=null",
]  # fmt: skip


def write_dataset(root, episodes: int = 2, frames: int = 12):
    """A LeRobotDataset v3 through lerobot's own writer: PNG frames of another camera, 4-d vectors."""
    features = {
        CAMERA: {"dtype": "image", "shape": (SIZE, SIZE, 3), "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": (DIM,), "names": ["x", "y", "z", "grip"]},
        "action": {"dtype": "float32", "shape": (DIM,), "names": ["dx", "dy", "dz", "grip"]},
    }
    ds = LeRobotDataset.create("local/own", FPS, root=root, features=features, use_videos=False)
    rng = np.random.default_rng(0)
    for _ in range(episodes):
        for _ in range(frames):
            ds.add_frame(
                {
                    CAMERA: rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8),
                    "observation.state": rng.normal(size=DIM).astype(np.float32),
                    "action": rng.uniform(-1, 1, DIM).astype(np.float32),
                    "task": "reach the goal position",
                }
            )
        ds.save_episode()
    ds.finalize()
    return root


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("own") / "own")


def project_config(dataset, out_dir, *extra):
    with initialize(version_base="1.3", config_path="../../conf"):
        return compose(
            "config",
            overrides=[
                "task=metaworld_mt10",
                f"task.image_key={CAMERA}",
                f"task.image_size={SIZE}",
                "task.env.camera=corner2",
                "model.policy.waypoint_weight=0",  # an uncalibrated camera (conf/experiment/metaworld.yaml)
                f"train.policy.dataset={dataset}",
                f"train.policy.out_dir={out_dir}",
                *TINY_POLICY,
                *extra,
            ],
        )


@pytest.fixture(scope="module")
def trained(own, tmp_path_factory):
    """The same dataset through both trainers: {trainer: pretrained_model dir}."""
    from policies.train_policy import PRETRAINED_DIR, train

    runs = tmp_path_factory.mktemp("own_runs")
    train(project_config(own, runs / "project"))
    cmd = [
        sys.executable, "-m", "lerobot.scripts.lerobot_train", "--policy.type=vipra", "--policy.dim=32",
        "--policy.layers=1", "--policy.heads=2", "--policy.chunk_size=6", "--policy.n_action_steps=3",
        '--policy.backbone={"dim": 32, "heads": 2, "layers": 1, "horizon": 6}',
        "--dataset.repo_id=local/own", f"--dataset.root={own}", "--dataset.use_imagenet_stats=false",
        f"--output_dir={runs / 'lerobot'}", "--steps=2", "--batch_size=2", "--save_freq=2", "--env_eval_freq=0",
        "--num_workers=0",
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stderr[-3000:]
    return {
        "project": runs / "project" / PRETRAINED_DIR,
        "lerobot": runs / "lerobot" / "checkpoints" / "last" / "pretrained_model",
    }


@pytest.mark.parametrize("trainer", ["project", "lerobot"])
def test_both_trainers_take_the_features_of_the_dataset(trained, trainer):
    config = make_policy(trained[trainer]).config
    assert list(config.input_features) == [CAMERA, "observation.state"]
    assert config.input_features[CAMERA].shape == (3, SIZE, SIZE) and config.state_dim == DIM
    assert (
        config.action_dim == DIM and config.backbone["image_size"] == SIZE
    )  # a scratch backbone at the camera's size


def test_both_policies_evaluate_in_the_harness_on_metaworld_with_the_matching_camera(trained):
    from sim.evaluate import evaluate

    policies = {name: functools.partial(make_policy, path) for name, path in trained.items()}
    results = evaluate(
        policies, ["reach-v3"], ["standard"], episodes=1, num_envs=1, image_size=SIZE, control_hz=FPS,
        suite="metaworld", env_kwargs={"camera": "corner2"},
    )  # fmt: skip
    for name in trained:
        success = results["policies"][name]["tasks"]["reach-v3"]["standard"]["success"]
        assert success["n"] == 1 and 0.0 <= success["rate"] <= 1.0


def test_a_policy_of_another_camera_size_is_refused_by_the_harness_naming_both(trained):
    from sim.evaluate import evaluate

    with pytest.raises(
        ValueError, match=r"is \(3, 96, 96\).*renders 'observation.images.image' at \(3, 64, 64\)"
    ):
        evaluate({"p": functools.partial(make_policy, trained["project"])}, ["reach-v3"], ["standard"], 1, 1,
                 image_size=64, suite="metaworld")  # fmt: skip


def test_a_project_trained_policy_loads_in_lerobot_and_runs_in_lerobot_eval(datasets, tmp_path):
    """policies.train_policy on the suite's demos -> lerobot's make_policy from the folder -> lerobot-eval."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import make_policy as lerobot_make_policy

    from policies.train_policy import PRETRAINED_DIR, train
    from sim.lerobot_env import TabletopEnvConfig

    with initialize(version_base="1.3", config_path="../../conf"):
        cfg = compose(
            "config",
            overrides=[
                f"train.policy.dataset={datasets[0] / 'demos'}",
                f"train.policy.out_dir={tmp_path / 'run'}",
                "task.tasks=[stack_block,carrot_on_plate]",
                *TINY_POLICY,
            ],
        )
    train(cfg)
    path = tmp_path / "run" / PRETRAINED_DIR
    config = PreTrainedConfig.from_pretrained(path)
    config.pretrained_path = str(path)
    policy = lerobot_make_policy(config, env_cfg=TabletopEnvConfig(task="stack_block"))
    assert type(policy).__name__ == "VipraPolicy"
    # lerobot's own loader finds the processors and their statistics (what lerobot-eval runs).
    from lerobot.policies import make_pre_post_processors

    pre, post = make_pre_post_processors(config, pretrained_path=str(path))
    assert sorted(pre.steps[-1].stats) == ["action", "observation.state"]
    assert [type(s).__name__ for s in post.steps][:2] == [
        "UnnormalizerProcessorStep",
        "BinarizeActionsProcessorStep",
    ]
    assert post.steps[1].dims == [6]  # the suite's gripper
    lerobot_eval_one_episode(path, tmp_path / "eval")


# ---------------------------------------------------------------------------------------------- bad input
def features(*cameras, state=7, action=7):  # STATS' dims
    inputs = {c: PolicyFeature(FeatureType.VISUAL, (3, 64, 64)) for c in cameras}
    inputs |= {"observation.state": PolicyFeature(FeatureType.STATE, (state,))} if state else {}
    outputs = {"action": PolicyFeature(FeatureType.ACTION, (action,))} if action else {}
    return {"input_features": inputs, "output_features": outputs}


@pytest.mark.parametrize(
    "feats, kw, message",
    [
        (features(), {}, r"needs a camera \(observation.images.\*\), which the dataset lacks; its features are \['observation.state', 'action'\]"),
        (features(CAMERA, action=0), {}, r"needs \['action'\], which the dataset lacks"),
        (features(CAMERA, "observation.images.top"), {}, r"has cameras \['observation.images.corner2', 'observation.images.top'\].*name it with `camera`"),
        (features(CAMERA), {"camera": "observation.images.wrist"}, r"'observation.images.wrist' is not among the dataset's cameras \['observation.images.corner2'\]"),
        (features(CAMERA, state=0), {}, r"needs \['observation.state'\]"),
    ],
)  # fmt: skip
def test_datasets_the_policy_cannot_read_are_refused_by_name(feats, kw, message):
    with pytest.raises(ValueError, match=message):
        VipraPolicy(tiny_config(**feats, **kw))


def test_two_cameras_are_fine_when_one_is_named():
    config = tiny_config(
        **features("observation.images.image", "observation.images.top"), camera="observation.images.top"
    )
    policy = VipraPolicy(config)
    assert list(policy.config.input_features) == ["observation.images.top", "observation.state"]


def test_the_harness_refuses_what_the_env_cannot_give_naming_both():
    from sim.features import FeatureMap

    frames = {"observation.images.image": torch.rand(1, 3, 64, 64), "observation.state": torch.zeros(1, 7)}
    two = VipraConfig(
        **features("observation.images.a", "observation.images.b", state=7), camera="observation.images.a"
    )
    two.input_features = features("observation.images.a", "observation.images.b", state=7)["input_features"]
    policy = type("P", (), {"config": two})()
    with pytest.raises(
        ValueError,
        match=r"reads the camera\(s\) \['observation.images.a', 'observation.images.b'\]; the env renders \['observation.images.image'\]",
    ):
        FeatureMap(policy, frames)
    policy.config = tiny_config(**features("observation.images.corner2", state=4))
    with pytest.raises(ValueError, match="'observation.state' has 4 dimensions; the env's has 7"):
        FeatureMap(policy, frames)
    renamed = FeatureMap(type("P", (), {"config": tiny_config(**features(CAMERA, state=7))})(), frames)(
        frames
    )
    assert set(renamed) == {CAMERA, "observation.state"}
