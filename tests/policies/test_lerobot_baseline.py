import json
import shutil

import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

from policies.lerobot_baseline import PRIVILEGED_KEYS, load_lerobot_policy, train_act

# ACT as small as it goes (the ResNet-18 stays: ACT takes only ResNets) so that training is seconds.
TINY = {
    "dim_model": 16,
    "n_heads": 2,
    "dim_feedforward": 32,
    "n_encoder_layers": 1,
    "n_decoder_layers": 1,
    "n_vae_encoder_layers": 1,
    "latent_dim": 4,
}
CHUNK, N_ACTION_STEPS = 4, 2


@pytest.fixture(scope="module")
def trained(datasets, tmp_path_factory):
    root = datasets[0] / "demos"
    out = tmp_path_factory.mktemp("act") / "run"
    path = train_act(
        root, out, steps=2, batch_size=4, chunk_size=CHUNK, n_action_steps=N_ACTION_STEPS, log_freq=1, **TINY
    )
    return root, path


def _batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "observation.images.image": torch.rand(2, 3, 64, 64, generator=g),
        "observation.state": torch.randn(2, 7, generator=g) * 0.1,
        "observation.environment_state": torch.randn(2, 8, generator=g),
        "task": ["stack the green block on the yellow block", "put carrot on plate"],
    }


def test_training_writes_a_policy_without_the_privileged_input(trained):
    _, path = trained
    assert path.parts[-3:] == ("checkpoints", "last", "pretrained_model")
    config = json.loads((path / "config.json").read_text())
    assert set(config["input_features"]) == {"observation.images.image", "observation.state"}
    assert set(config["output_features"]) == {"action"}
    assert config["chunk_size"] == CHUNK and config["pretrained_backbone_weights"] is None


def test_adapter_returns_unnormalized_actions_for_a_batch_of_envs(trained):
    root, path = trained
    policy = load_lerobot_policy(path, task="stack_block")
    batch = _batch()
    with torch.inference_mode():
        policy.reset()
        actions = [policy.select_action(batch) for _ in range(N_ACTION_STEPS + 1)]  # refills the queue once
        policy.reset()
        raw = policy.policy.select_action(policy.preprocessor({k: batch[k] for k in policy.input_keys}))
        # Privileged state is dropped: changing it changes nothing.
        policy.reset()
        other = policy.select_action({**batch, PRIVILEGED_KEYS[0]: batch[PRIVILEGED_KEYS[0]] + 5})
    for a in actions:
        assert a.shape == (2, 7) and torch.isfinite(a).all()
    assert not torch.equal(actions[0][0], actions[0][1]), "each env gets its own action"
    torch.testing.assert_close(other, actions[0])

    # The postprocessor maps the network's output back with the dataset's own statistics.
    stats = LeRobotDatasetMetadata("local/demos", root=root).stats["action"]
    mean, std = (torch.as_tensor(stats[k], dtype=torch.float32) for k in ("mean", "std"))
    torch.testing.assert_close(actions[0], raw * std + mean, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(raw, actions[0]), "actions came back still normalized"


def test_loading_without_processor_stats_names_the_missing_files(trained, tmp_path):
    _, path = trained
    copy = tmp_path / "pretrained_model"
    shutil.copytree(path, copy)
    stats_file = next(copy.glob("policy_preprocessor_step_*_normalizer_processor.safetensors"))
    stats_file.unlink()
    (copy / "policy_postprocessor.json").unlink()
    with pytest.raises(FileNotFoundError, match="policy_postprocessor.json") as err:
        load_lerobot_policy(copy)
    assert stats_file.name in str(err.value)


def test_existing_output_dir_is_refused(datasets, tmp_path):
    with pytest.raises(FileExistsError, match="already exists"):
        train_act(datasets[0] / "demos", tmp_path, steps=1)


@pytest.mark.parametrize("episodes", [None, [1]])  # [1]: rows of a filtered dataset are relative
def test_cached_action_windows_give_lerobots_own_items(datasets, episodes):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from policies.lerobot_baseline import _cached_window_columns

    root = datasets[0] / "demos"
    fps = LeRobotDatasetMetadata("local/demos", root=root).fps
    windows = {"action": [i / fps for i in range(CHUNK)], "observation.state": [-1 / fps, 0.0]}
    dataset = LeRobotDataset("local/demos", root=root, episodes=episodes, delta_timestamps=windows)
    rows = [0, 1, len(dataset) // 2, len(dataset) - 1]  # the last row's action window runs past the episode
    expected = [dataset[i] for i in rows]
    with _cached_window_columns():
        got = [dataset[i] for i in rows]
    assert dataset._ensure_reader()._window_columns  # the cached path was the one taken
    for want, have in zip(expected, got, strict=True):
        assert want.keys() == have.keys()
        for key, value in want.items():
            assert torch.equal(value, have[key]) if torch.is_tensor(value) else value == have[key], key
