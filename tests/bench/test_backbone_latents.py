"""bench.backbone_latents: R^2 per horizon step over the labelled steps, and the persistence reference."""

from types import SimpleNamespace

import pytest
import torch

from bench.backbone_latents import (
    after_release,
    demo_chunk_skill,
    embodiment_of,
    group_names,
    persistence_r2,
    r2_by_group,
    r2_by_step,
)


def test_r2_by_step_scores_each_step_over_its_labelled_rows():
    torch.manual_seed(0)
    targets = torch.randn(64, 3, 2, 4)
    predicted = targets.clone()
    predicted[:, 1] = targets[:, 1].mean(0)  # step 2: the mean, R^2 0
    predicted[:, 2] += torch.randn_like(targets[:, 2])  # step 3: noise as large as the signal, R^2 ~ 0
    targets[40:, 0] = float("nan")  # unlabelled rows are left out, not scored as errors
    predicted[40:, 0] = 100.0
    exact, mean, noisy = r2_by_step(predicted, targets)
    assert exact == pytest.approx(1.0) and mean == pytest.approx(0.0, abs=1e-6) and noisy < 0.2


def test_persistence_reads_a_latent_that_carries_over_and_not_across_episodes():
    torch.manual_seed(0)
    slow = torch.randn(400, 1, 2).cumsum(0) * 0.1  # a random walk: the next is the current plus a little
    episodes = torch.arange(400) // 100
    assert persistence_r2(slow, episodes, lag=1) > 0.9
    assert persistence_r2(torch.randn(400, 1, 2), episodes, lag=1) < 0.05  # independent steps
    slow[99::100] = float("nan")  # each episode's last frame has no transition
    assert persistence_r2(slow, episodes, lag=1) > 0.9


def test_groups_split_embodiment_and_play_and_are_scored_apart():
    tasks = [
        "put carrot on plate",
        "wave above the table",
        "push the spoon across the table",
        "put carrot on plate",
    ]
    groups = group_names(torch.tensor([0.0, 0.0, 1.0, 1.0]), tasks)
    assert groups == ["robot_task", "robot_play", "hand_play", "hand_task"]
    torch.manual_seed(0)
    targets = torch.randn(80, 2, 1, 3)
    predicted = targets.clone()
    groups = ["robot_task"] * 40 + ["hand_play"] * 40
    predicted[40:] = 0.0  # the hand's play predicted as the mean: R^2 ~ 0 there, 1 for the robot's tasks
    scores = r2_by_group(predicted, targets, groups)
    assert scores["robot_task"]["r2_step_1"] == pytest.approx(1.0)
    assert abs(scores["hand_play"]["r2_mean_over_steps"]) < 0.1 and scores["hand_play"]["frames"] == 40


class ConstantBackbone(torch.nn.Module):
    """Predicts the same standardized latents for every frame."""

    def __init__(self, latents: torch.Tensor, horizon: int = 4):
        super().__init__()
        self.cfg, self.value = SimpleNamespace(horizon=horizon, vocab_size=64), latents

    def forward(self, frames, words):
        return SimpleNamespace(latents=self.value.expand(len(frames), self.cfg.horizon, *self.value.shape))


def test_demo_chunk_skill_reads_predictions_in_the_labels_units_and_refuses_non_actions(datasets, tmp_path):
    from data.clips import episode_columns
    from world_model.backbone.train import label_statistics
    from world_model.lam.label import save_labels

    root = datasets[0]
    actions = torch.from_numpy(episode_columns(root / "demos", ["action"])["action"]).float()
    labels = {
        "latents": actions[:, None] * 2 + 1,
        "episode_index": torch.zeros(len(actions), dtype=torch.long),
    }
    path = tmp_path / "labels.safetensors"
    save_labels(labels, path, {"model_config": {"action_dim": 7, "frame_stride": 1}})
    mean, std = label_statistics(labels["latents"])
    centre = (actions.mean(0)[None] - mean) / std  # the demos' mean action, standardized as the labels
    skill = demo_chunk_skill(ConstantBackbone(centre), path, root / "demos", "observation.images.image", 1)
    assert skill["demo_chunk_skill"] == pytest.approx(0.0, abs=1e-4)  # the constant predictor's, exactly
    assert skill["demo_chunk_skill_per_dim"][3:5] == [None, None]  # the demos never roll or pitch
    phases = skill["demo_chunk_skill_by_phase"]
    assert phases["before_release"]["frames"] + phases["after_release"]["frames"] == skill["demo_frames"]
    assert phases["after_release"]["frames"] > 0  # these demos run to the horizon after the release
    for phase in phases.values():  # the mean action scores 0 in each phase too, against the same mean
        assert phase["skill"] == pytest.approx(0.0, abs=1e-4)
    far = demo_chunk_skill(ConstantBackbone(centre + 3), path, root / "demos", "observation.images.image", 1)
    assert far["demo_chunk_skill"] < -1
    save_labels(labels, path, {"model_config": {"code_dim": 16}})  # a latent action model's latents
    with pytest.raises(ValueError, match="not one-step pseudo-actions"):
        demo_chunk_skill(ConstantBackbone(centre), path, root / "demos", "observation.images.image", 1)


def test_after_release_starts_the_step_after_each_demos_last_closed_gripper_command():
    gripper = torch.tensor([0, 1, 1, 0, 0, 0, 0, 0], dtype=torch.float32)
    actions = torch.cat([torch.zeros(8, 6), gripper[:, None]], 1)
    episodes = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])  # demo 1 never closes: nothing of it is released
    assert after_release(actions, episodes).tolist() == [0, 0, 0, 1, 1, 0, 0, 0]


def test_embodiment_is_read_per_episode_and_a_demo_dataset_is_the_robots(datasets):
    from data.clips import episode_columns

    root = datasets[0]
    assert embodiment_of(root / "demos", torch.tensor([0, 1])).tolist() == [0, 0]
    table = episode_columns(root / "video", ["embodiment"])
    per_row, episodes = table["embodiment"].reshape(-1), table["episode_index"]
    expected = {int(e): int(per_row[episodes == e][0]) for e in set(episodes.tolist())}
    ids = sorted(expected)
    assert embodiment_of(root / "video", torch.tensor(ids)).tolist() == [expected[i] for i in ids]
    assert set(expected.values()) == {0, 1}  # the fixture's video has both embodiments
