"""state_fm: the ViPRA-style decoder on a privileged-state context (robot state, object poses, instruction)."""

import pytest
import torch

from policies.vipra import VipraPolicy, make_policy
from policies.vipra.processor_vipra import make_vipra_pre_post_processors
from tests.policies.tiny import STATE_STATS, processed, save_trained, tiny_config, tiny_state_config


def state_batch(B=2, H=6, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "observation.state": torch.randn(B, 7, generator=g),
        "observation.environment_state": torch.randn(B, 8, generator=g),
        "action": 0.1 + 0.5 * torch.randn(B, H, 7, generator=g),
        "action_is_pad": torch.zeros(B, H, dtype=torch.bool),
        "task": ["put carrot on plate", "stack the green block on the yellow block"],
    }


def test_state_fm_overfits_one_chunk_from_object_poses_alone():
    """Two samples that differ only in their object poses: the sampler must reproduce each one's chunk,
    so the chunk is read from the privileged state (there is no camera)."""
    torch.manual_seed(0)
    policy = VipraPolicy(tiny_state_config(shortcut_fraction=0.0))
    assert policy.backbone is None and "observation.images.image" not in policy.config.input_features
    runner = processed(policy, STATE_STATS)
    batch = state_batch()
    batch["observation.state"][1] = batch["observation.state"][0]
    batch["task"] = ["put carrot on plate"] * 2
    normalized = runner.preprocessor(dict(batch))
    opt = torch.optim.AdamW(policy.get_optim_params(), lr=3e-3)
    for _ in range(600):
        loss, _ = policy.forward(normalized)
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.eval()
    noise = torch.randn(2, 6, 7, generator=torch.Generator().manual_seed(1))
    sampled = runner.predict_action_chunk(batch, noise=noise)
    error = ((sampled - batch["action"]) / 0.5).pow(2).mean().item()  # normalized units; chance ~2
    assert error < 0.1, error


def test_state_fm_saves_and_loads_identical_actions(tmp_path):
    torch.manual_seed(0)
    policy = VipraPolicy(tiny_state_config()).eval()
    save_trained(policy, tmp_path, STATE_STATS)
    loaded = make_policy(tmp_path)
    assert loaded.config.context == "state"
    batch = state_batch()
    noise = torch.randn(2, 6, 7, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        loaded.predict_action_chunk(batch, noise=noise),
        processed(policy, STATE_STATS).predict_action_chunk(batch, noise=noise),
        rtol=0,
        atol=0,
    )
    closed_loop = make_policy(tmp_path, n_action_steps=1)
    calls = []
    model = closed_loop.policy
    real = model.predict_action_chunk
    model.predict_action_chunk = lambda b, noise=None: calls.append(1) or real(b, noise)
    obs = {k: batch[k] for k in ("observation.state", "observation.environment_state", "task")}
    for _ in range(3):
        assert closed_loop.select_action(obs).shape == (2, 7)
    assert len(calls) == 3  # replans every step


def test_state_fm_refusals():
    with pytest.raises(
        ValueError, match="dataset stats need mean and std of 'observation.environment_state'"
    ):
        config = VipraPolicy(tiny_state_config()).config
        make_vipra_pre_post_processors(
            config, {k: v for k, v in STATE_STATS.items() if "environment" not in k}
        )
    with pytest.raises(ValueError, match=r"state context needs \['observation.environment_state'\]"):
        only_state = {"observation.state": tiny_config().input_features["observation.state"]}
        VipraPolicy(tiny_state_config(input_features=only_state))
    # An image policy built from a dataset that has the object poses keeps only its camera and state,
    # and its processors normalize only those.
    features = tiny_config().input_features | tiny_state_config().input_features
    image_policy = VipraPolicy(tiny_config(input_features=features))
    assert list(image_policy.config.input_features) == ["observation.images.image", "observation.state"]
    normalizer = processed(image_policy, STATE_STATS).preprocessor.steps[-1]
    assert sorted(normalizer.stats) == ["action", "observation.state"]
    with pytest.raises(ValueError, match="context must be one of"):
        tiny_config(context="lidar")


def test_state_fm_trains_on_the_demos_with_a_weight_average_and_resumes(datasets, tmp_path):
    """The shared trainer on the privileged state (no camera read); the saved policy holds the EMA
    weights, the checkpoint both, and a resumed run continues the average."""
    from hydra import compose, initialize
    from safetensors.torch import load_file

    from policies.train_policy import train

    overrides = [
        "experiment=ceiling",
        f"train.policy.dataset={datasets[0] / 'demos'}",
        f"train.policy.out_dir={tmp_path}",
        "task.tasks=[stack_block,carrot_on_plate]",
        "train.policy.steps=3",
        "train.policy.batch_size=8",
        "model.policy.scheduler_warmup_steps=1",
        "train.policy.ckpt_every=2",
        "train.policy.ema.decay=0.9",
        "model.policy.dim=32",
        "model.policy.layers=1",
    ]
    with initialize(version_base="1.3", config_path="../../conf"):
        cfg = compose("config", overrides=overrides)
    assert train(cfg)["resumed_at"] == 0
    saved = load_file(tmp_path / "pretrained_model/model.safetensors")
    ckpt = tmp_path / "checkpoints/last"
    raw, ema = load_file(ckpt / "policy.safetensors"), load_file(ckpt / "ema.safetensors")
    key = "decoder.out.weight"
    torch.testing.assert_close(saved[key], ema[key], rtol=0, atol=0)
    assert not torch.equal(saved[key], raw[key])  # the average lags the trained weights
    policy = make_policy(tmp_path / "pretrained_model")
    assert policy.config.context == "state" and policy.policy.backbone is None
    cfg.train.policy.steps = 4
    assert train(cfg)["resumed_at"] == 3
    resumed = load_file(tmp_path / "pretrained_model/model.safetensors")
    assert not torch.equal(resumed[key], saved[key])


def test_binary_action_dims_are_snapped_to_zero_or_one():
    """By the postprocessor, in the dataset's units (after unnormalizing)."""
    torch.manual_seed(0)
    policy = processed(VipraPolicy(tiny_state_config(binary_action_dims=[6])).eval(), STATE_STATS)
    noise = torch.randn(2, 6, 7, generator=torch.Generator().manual_seed(3))
    chunk = policy.predict_action_chunk(state_batch(), noise=noise)
    assert set(chunk[..., 6].unique().tolist()) <= {0.0, 1.0}
    free = VipraPolicy(tiny_state_config()).eval()
    free.load_state_dict(policy.policy.state_dict())
    raw = processed(free, STATE_STATS).predict_action_chunk(state_batch(), noise=noise)
    torch.testing.assert_close(chunk[..., :6], raw[..., :6], rtol=0, atol=0)  # the other dims untouched
    torch.testing.assert_close(chunk[..., 6], (raw[..., 6] > 0.5).float(), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"binary_action_dims \[7\] are not action dimensions \(0..6\)"):
        VipraPolicy(tiny_state_config(binary_action_dims=[7]))


def test_held_out_demos_are_whole_episodes_scored_the_same_every_time(datasets, tmp_path):
    """train.policy.val_fraction: the held-out demos are whole episodes the policy never trains on, and
    their scores are deterministic and reach summary.json."""
    from hydra import compose, initialize

    from data.dataset import load_metadata
    from policies.train_policy import PolicyTask, train

    overrides = [
        "experiment=ceiling",
        f"train.policy.dataset={datasets[0] / 'demos'}",
        f"train.policy.out_dir={tmp_path}",
        "task.tasks=[stack_block,carrot_on_plate]",
        "train.policy.steps=2",
        "train.policy.batch_size=8",
        "train.policy.val_fraction=0.5",
        "model.policy.scheduler_warmup_steps=1",
        "model.policy.dim=32",
        "model.policy.layers=1",
    ]
    with initialize(version_base="1.3", config_path="../../conf"):
        cfg = compose("config", overrides=overrides)
    task = PolicyTask(cfg, torch.device("cpu"))
    trained, held = set(task.bank.episodes), set(task.held_out.episodes)
    demos = load_metadata(datasets[0] / "demos").total_episodes
    assert trained and held and not trained & held and len(trained | held) == demos
    first, again = task.validate(0, task.model), task.validate(0, task.model)
    assert first == again and first["chunk_skill"] <= 1 and first["fm_loss"] > 0
    summary = train(cfg)
    assert summary["held_out_fm_loss"] > 0 and "held_out_chunk_skill" in summary
