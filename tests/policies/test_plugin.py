"""The LeRobot plugin: lerobot discovers the installed `lerobot_policy_vipra` and trains our policy with
its own trainer (`lerobot-train --policy.type=vipra`), whose checkpoint then runs here."""

import subprocess
import sys

import pytest
import torch

from policies.vipra import make_policy
from tests.policies.lerobot_cli import lerobot_eval_one_episode


def test_lerobot_discovers_the_plugin():
    code = (
        "from lerobot.configs.policies import PreTrainedConfig\n"
        "from lerobot.utils.import_utils import register_third_party_plugins\n"
        "assert 'vipra' not in PreTrainedConfig.get_known_choices()\n"
        "register_third_party_plugins()\n"
        "from lerobot.policies.factory import get_policy_class\n"
        "print(get_policy_class('vipra').__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.strip().endswith("VipraPolicy")


@pytest.fixture(scope="module")
def trained(datasets, tmp_path_factory):
    """A vipra policy trained for 2 steps by lerobot-train on the test demos: its pretrained_model dir."""
    root = datasets[0] / "demos"
    out = tmp_path_factory.mktemp("lerobot_train") / "run"
    cmd = [
        sys.executable, "-m", "lerobot.scripts.lerobot_train", "--policy.type=vipra", "--policy.dim=32",
        "--policy.layers=1", "--policy.heads=2", f"--dataset.repo_id=local/{root.name}", f"--dataset.root={root}",
        "--dataset.video_backend=pyav", "--dataset.use_imagenet_stats=false", f"--output_dir={out}",
        "--steps=2", "--batch_size=2", "--log_freq=1", "--save_freq=2", "--env_eval_freq=0", "--num_workers=0",
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stderr[-3000:]
    return out / "checkpoints" / "last" / "pretrained_model"


def test_lerobot_train_trains_the_policy_from_a_dataset(trained, datasets):
    policy = make_policy(trained)
    # The dataset's statistics reached the processors lerobot-train saved beside the weights.
    from lerobot.datasets import LeRobotDatasetMetadata

    from policies.vipra.processor_vipra import MIN_STD

    meta = LeRobotDatasetMetadata("local/demos", root=datasets[0] / "demos")
    action_mean = torch.as_tensor(meta.stats["action"]["mean"], dtype=torch.float32)
    torch.testing.assert_close(policy.normalize("action", action_mean), torch.zeros(7))
    normalizer = policy.preprocessor.steps[-1]
    assert sorted(normalizer.stats) == ["action", "observation.state"]  # not the privileged poses
    assert min(float(s["std"].min()) for s in normalizer._tensor_stats.values()) >= MIN_STD
    size = policy.policy.backbone.cfg.image_size
    batch = {
        "observation.images.image": torch.rand(1, 3, size, size),
        "observation.state": torch.zeros(1, 7),
        "task": ["stack the green block on the yellow block"],
    }
    assert policy.predict_action_chunk(batch).shape == (1, policy.config.chunk_size, 7)


def test_lerobot_eval_runs_the_checkpoint_on_the_tabletop_env(trained, tmp_path):
    lerobot_eval_one_episode(trained, tmp_path / "eval")


def test_lerobot_train_on_a_dataset_without_actions_names_its_keys(datasets, tmp_path):
    """The actionless video dataset has no `action`: refused before training, listing the keys it has."""
    root = datasets[0] / "video"
    cmd = [
        sys.executable, "-m", "lerobot.scripts.lerobot_train", "--policy.type=vipra", "--policy.dim=32",
        "--policy.layers=1", "--policy.heads=2", f"--dataset.repo_id=local/{root.name}", f"--dataset.root={root}",
        "--dataset.video_backend=pyav", f"--output_dir={tmp_path / 'run'}", "--steps=2", "--batch_size=2",
        "--env_eval_freq=0", "--num_workers=0",
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=200)
    assert run.returncode != 0
    assert "the policy needs ['action'], which the dataset lacks" in run.stderr
    assert "its features are ['observation.images.image'" in run.stderr


def test_lerobot_train_runs_the_optimizer_and_schedule_of_the_project_trainer():
    """lerobot-train builds its optimizer and scheduler from the config's presets (make_optimizer_and_
    scheduler); they are the project trainer's: AdamW over the same groups, warm-up then cosine."""
    from types import SimpleNamespace

    from lerobot.optim.factory import make_optimizer_and_scheduler

    from policies.vipra import VipraPolicy
    from tests.policies.tiny import tiny_config
    from world_model.training.schedule import warmup_cosine

    config = tiny_config(scheduler_warmup_steps=3, backbone_lr_scale=0.5)
    policy = VipraPolicy(config)
    steps = 10
    presets = {"optimizer": config.get_optimizer_preset(), "scheduler": config.get_scheduler_preset()}
    cfg = SimpleNamespace(**presets, steps=steps, use_policy_training_preset=True)
    optimizer, scheduler = make_optimizer_and_scheduler(cfg, policy)
    assert [len(g["params"]) for g in optimizer.param_groups] == [
        len(g["params"]) for g in policy.get_optim_params()
    ]
    base = [config.optimizer_lr, config.optimizer_lr * 0.5]
    for step in range(steps):
        factor = warmup_cosine(step, steps, warmup=3, floor=config.scheduler_floor)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([b * factor for b in base])
        optimizer.step()
        scheduler.step()
    assert cfg.optimizer.grad_clip_norm == config.optimizer_grad_clip_norm == 1.0


def test_the_pretrained_backbone_is_a_config_field(tmp_path):
    """VipraConfig.pretrained_backbone (lerobot-train --policy.pretrained_backbone=<run>): the backbone's
    config and weights come from the run; a saved policy carries them and no longer needs the run."""
    import shutil

    from policies.vipra import VipraPolicy
    from tests.policies.tiny import TINY_BACKBONE, save_trained, tiny_config
    from world_model.backbone.model import VideoBackbone
    from world_model.training.checkpoint import save_checkpoint

    backbone = VideoBackbone(TINY_BACKBONE)
    optimizer = torch.optim.AdamW(backbone.parameters())
    meta = {"model_config": TINY_BACKBONE.to_dict()}
    save_checkpoint(tmp_path / "backbone", {"model": backbone}, optimizer, 1, torch.Generator(), meta)
    config = tiny_config(backbone={}, pretrained_backbone=str(tmp_path / "backbone"))
    assert config.backbone == TINY_BACKBONE.to_dict()
    policy = VipraPolicy(config)
    for k, v in backbone.state_dict().items():
        assert torch.equal(policy.backbone.state_dict()[k], v), k
    save_trained(policy, tmp_path / "policy")
    shutil.rmtree(tmp_path / "backbone")
    loaded = make_policy(tmp_path / "policy")
    assert loaded.config.pretrained_backbone is None
    assert torch.equal(
        loaded.policy.backbone.state_dict()["blocks.0.mlp.0.weight"],
        backbone.state_dict()["blocks.0.mlp.0.weight"],
    )
