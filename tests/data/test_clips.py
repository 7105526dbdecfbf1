import numpy as np
import pytest
import torch

from data.chunks import Clips, EpisodeBank
from data.clips import flow_targets, to_uint8_hwc
from data.dataset import load_dataset

IMAGE = "observation.images.image"


def test_clips_are_consecutive_frames_inside_one_episode(datasets):
    root, _, _ = datasets
    frames = load_dataset(root / "demos", [IMAGE])
    lengths = frames.meta.episodes["length"]
    clips = Clips.of(EpisodeBank.load(root / "demos", IMAGE, []), clip_len=4)
    assert len(clips) == sum(n - 4 + 1 for n in lengths)
    last_of_first_episode = lengths[0] - 4  # the last clip that fits in episode 0
    for i in (0, last_of_first_episode, last_of_first_episode + 1):
        clip = clips.clips(torch.tensor([i]))[0]
        start = int(clips.starts[i])
        assert clip.shape == (4, 3, 64, 64)
        expected = torch.stack([frames[start + k][IMAGE] for k in range(4)])
        torch.testing.assert_close(clip, expected, atol=0.5 / 255, rtol=0)
        assert {int(frames[start + k]["episode_index"]) for k in range(4)} == {int(clips.clip_episode[i])}
    assert int(clips.clip_episode[last_of_first_episode + 1]) == 1  # the next clip starts the next episode


def test_strided_clips_skip_frames_and_stay_inside_one_episode(datasets):
    root, _, _ = datasets
    bank = EpisodeBank.load(root / "demos", IMAGE, [])
    every, strided = Clips.of(bank, 4), Clips.of(bank, 4, stride=3)
    lengths = torch.bincount(bank.episode_index)
    assert len(strided) == int((lengths - 9).clamp_min(0).sum())  # a clip spans 3 x 3 steps: 10 frames
    i = torch.tensor([5])
    torch.testing.assert_close(strided.clips(i)[0], bank.frames[5 + 3 * torch.arange(4)].float() / 255)
    assert (bank.episode_index[strided.starts + 9] == bank.episode_index[strided.starts]).all()
    assert torch.equal(every.clips(i), Clips.of(bank, 4, stride=1).clips(i))
    with pytest.raises(ValueError, match="stride >= 1"):
        Clips.of(bank, 4, stride=0)


def test_clips_of_an_episode_subset_are_that_episodes(datasets):
    root, _, _ = datasets
    bank = EpisodeBank.load(root / "video", IMAGE, [])
    every, second = Clips.of(bank, 8), Clips.of(bank.subset([1]), 8)
    assert 0 < len(second) < len(every) and set(second.clip_episode.tolist()) == {1}
    first_of_episode_1 = int((every.clip_episode < 1).sum())  # clips of episode 0 come first
    torch.testing.assert_close(
        second.clips(torch.tensor([0])), every.clips(torch.tensor([first_of_episode_1]))
    )


def test_a_bank_without_an_image_key_has_the_columns_and_no_frames(datasets):
    root, _, _ = datasets
    full = EpisodeBank.load(root / "demos", IMAGE, ["action"], episodes=[1, 2])
    columns_only = EpisodeBank.load(root / "demos", None, ["action"], episodes=[1, 2])
    assert columns_only.frames.shape == (len(full), 0)
    torch.testing.assert_close(columns_only.columns["action"], full.columns["action"])
    for name in ("episode_start", "episode_end", "episode_index"):
        assert torch.equal(getattr(columns_only, name), getattr(full, name))
    assert columns_only.tasks == full.tasks


def test_bad_clip_requests_are_explained(datasets):
    root, _, _ = datasets
    bank = EpisodeBank.load(root / "demos", IMAGE, [])
    with pytest.raises(ValueError, match="no episode has 500 frames"):
        Clips.of(bank, clip_len=500)
    with pytest.raises(ValueError, match="clip_len >= 2"):
        Clips.of(bank, clip_len=1)
    with pytest.raises(KeyError, match="observation.images.wrist"):
        EpisodeBank.load(root / "demos", "observation.images.wrist", [])


def test_dis_flow_recovers_a_known_shift():
    rng = np.random.default_rng(0)
    texture = (rng.random((1, 64, 72, 3)) * 255).astype(np.uint8)
    texture = np.repeat(np.repeat(texture[:, ::4, ::4], 4, axis=1), 4, axis=2)[
        :, :64, :72
    ]  # blocky, trackable
    first, second = texture[:, :, 4:68], texture[:, :, 2:66]  # content moves 2 px to the right
    flow = flow_targets(np.ascontiguousarray(first), np.ascontiguousarray(second))
    assert flow.shape == (1, 2, 64, 64) and flow.dtype == np.float32
    centre = flow[0, :, 16:48, 16:48]
    assert abs(np.median(centre[0]) - 2.0) < 0.5 and abs(np.median(centre[1])) < 0.5


def test_flow_rejects_mismatched_batches():
    with pytest.raises(ValueError, match="uint8 RGB"):
        flow_targets(np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 8, 9, 3), np.uint8))
    assert to_uint8_hwc(torch.ones(2, 3, 4, 5)).shape == (2, 4, 5, 3)
