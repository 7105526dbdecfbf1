import warnings

import numpy as np
import pytest
from omegaconf import OmegaConf

from data.clips import episode_columns, load_episode_frames
from data.dataset import create_dataset, demo_features, load_dataset, video_features
from data.generate import generate_demos
from data.replay import compare_with_renders
from sim.env import TabletopEnv


def test_demos_load_through_lerobot_with_lossless_frames(datasets, cfg):
    root, summary, _ = datasets
    ds = load_dataset(root / "demos", required_keys=cfg.keys)
    assert ds.meta.total_episodes == 2 and len(ds) == summary["frames"]
    assert ds.meta.fps == 5 and ds.meta.image_keys == ["observation.images.image"] and not ds.meta.video_keys

    # generate_demos seeds attempt k with seed + k (k from 1), and here every attempt succeeded, so
    # demo 0 is attempt 1: its first frame is that scene's first render, bit for bit.
    assert summary["attempts"] == cfg.demos.episodes
    env = TabletopEnv("stack_block", "visual_matching")
    try:
        obs, _ = env.reset(seed=cfg.demos.seed + 1)
    finally:
        env.close()
    first = ds[0]
    assert first["task"] == "stack the green block on the yellow block"
    assert int(first["scene_seed"]) == cfg.demos.seed + 1
    np.testing.assert_allclose(first["observation.state"].numpy(), obs["agent_pos"], atol=1e-6)
    decoded = (first["observation.images.image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(decoded, obs["pixels"]["image"])
    assert first["action"].shape == (7,) and first["observation.environment_state"].shape == (8,)


def test_every_stored_frame_equals_a_fresh_render_of_its_step(datasets):
    """Reset each demo's scene from its seed, replay the executed actions: every frame is bit-exact."""
    root, summary, _ = datasets
    worst, compared = compare_with_renders(root / "demos")
    assert compared == summary["frames"] and worst == 0


def test_demos_run_to_the_horizon_and_succeed(datasets):
    """Each demo covers the whole episode (60 steps for these tasks) and ends placed and released; the
    label is the clean action, the env was stepped with the noisy one."""
    root, _, _ = datasets
    table = episode_columns(root / "demos", ["action", "executed_action", "observation.environment_state"])
    lengths = np.bincount(table["episode_index"])
    assert lengths.tolist() == [60, 60]
    noise = table["executed_action"][:, :3] - table["action"][:, :3]
    assert 0.002 < noise.std() < 0.01  # data.demos.noise = 0.005, clipped at the action box
    # After the release the expert holds still: the last 5 labels command no motion, gripper open.
    for ep in range(2):
        tail = table["action"][table["episode_index"] == ep][-5:]
        np.testing.assert_allclose(tail[:, :6], 0, atol=1e-6)
        assert (tail[:, 6] == 0).all()


def test_columns_read_whole_equal_the_datasets_librarys_rows(datasets):
    """episode_columns reads arrow columns in one go; values, shapes and dtypes are the per-row reader's."""
    import pyarrow as pa
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from data.clips import arrow_to_numpy

    root = datasets[0] / "demos"
    keys = ["observation.state", "action", "observation.environment_state"]
    fast = episode_columns(root, keys)
    rows = LeRobotDataset(repo_id="local/demos", root=root).hf_dataset.with_format("numpy")
    for key in [*keys, "episode_index", "frame_index"]:
        slow = np.asarray(rows[key])
        assert fast[key].dtype == slow.dtype and fast[key].shape == slow.shape
        np.testing.assert_array_equal(fast[key], slow)
    nested = pa.chunked_array([pa.array([[[1, 2], [3, 4]]]), pa.array([[[5, 6], [7, 8]]])])
    assert arrow_to_numpy(nested).shape == (2, 2, 2)
    with pytest.raises(ValueError, match="x: lists of unequal lengths"):
        arrow_to_numpy(pa.array([[1.0], [2.0, 3.0]]), "x")


def test_lossy_video_frames_are_warned_about(tmp_path):
    """A camera stored as encoded video, read where lossless frames are expected, names key and codec."""
    root = tmp_path / "lossy"
    with create_dataset(root, video_features(64, lossless=False), 5, "widowx_sim") as ds:
        for _ in range(3):
            ds.add_frame(
                {
                    "observation.images.image": np.full((64, 64, 3), 128, np.uint8),
                    "embodiment": np.zeros(1, np.int64),
                    "task": "t",
                }
            )
        ds.save_episode()
    with pytest.warns(
        UserWarning, match=r"'observation.images.image' .* stored as \w+ video, which is lossy"
    ):
        frames = load_episode_frames(root, "observation.images.image")
    assert frames[0].shape == (3, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_episode_frames(root, "observation.images.image", expect_lossless=False)


def test_actionless_video_has_no_action_column(datasets, cfg):
    root, _, summary = datasets
    ds = load_dataset(root / "video", required_keys=["observation.images.image"])
    assert "action" not in ds.features and "observation.state" not in ds.features
    assert summary["clips"] >= cfg.video.min_clips
    embodiments = np.unique(np.asarray(ds.hf_dataset.with_format("numpy")["embodiment"]))
    assert set(embodiments.tolist()) <= {0, 1} and summary["episodes"] == sum(
        summary["episodes_per_embodiment"].values()
    )
    assert all(isinstance(t, str) and t for t in ds.meta.tasks.index)


def test_full_horizon_video_shows_the_retreat_and_hold_as_the_demos_do(cfg, tmp_path):
    """By default a task attempt in the video stops 3 steps into the retreat; with full_horizon it runs to
    the task's horizon (60 steps here), as the demos do."""
    from data.generate import close_envs, generate_video

    video = OmegaConf.merge(cfg.video, {"min_clips": 1, "robot_fraction": 1.0, "play_fraction": 0.0})
    try:
        lengths = {}
        for full in (False, True):
            root = tmp_path / f"full_{full}"
            generate_video(OmegaConf.merge(video, {"full_horizon": full}), cfg.task, root)
            lengths[full] = np.bincount(episode_columns(root, [])["episode_index"]).tolist()
    finally:
        close_envs()
    assert lengths[True] == [60] and len(lengths[False]) == 1 and lengths[False][0] < 60


def test_existing_path_is_never_overwritten(datasets, cfg):
    root, _, _ = datasets
    before = sorted(p.name for p in (root / "demos").rglob("*"))
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        generate_demos(cfg.demos, cfg.task, root / "demos")
    assert sorted(p.name for p in (root / "demos").rglob("*")) == before


def test_missing_key_lists_the_keys_it_has(datasets):
    root, _, _ = datasets
    with pytest.raises(KeyError, match=r"no feature\(s\) \['observation.images.wrist'\].*observation.state"):
        load_dataset(root / "demos", required_keys=["observation.images.wrist"])


def test_not_a_dataset_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="meta/info.json"):
        load_dataset(tmp_path)


def test_corrupt_video_names_file_and_episode(tmp_path):
    root = tmp_path / "video"
    with create_dataset(root, video_features(64, lossless=False), 5, "widowx_sim") as ds:
        for _ in range(3):
            ds.add_frame(
                {
                    "observation.images.image": np.zeros((64, 64, 3), np.uint8),
                    "embodiment": np.zeros(1, np.int64),
                    "task": "t",
                }
            )
        ds.save_episode()
    video = next(root.rglob("*.mp4"))
    video.write_bytes(video.read_bytes()[:200])
    with pytest.raises(ValueError, match=rf"episode 0.*corrupt.*{video.name}"):
        load_dataset(root)
    video.unlink()
    with pytest.raises(FileNotFoundError, match=rf"episode 0.*missing.*{video.name}"):
        load_dataset(root)


def test_interrupted_generation_leaves_nothing_half_written(datasets, tmp_path):
    root, _, _ = datasets
    target = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt), create_dataset(target, demo_features(64), 5, "widowx_sim") as ds:
        ds.add_frame(
            {
                "observation.images.image": np.zeros((64, 64, 3), np.uint8),
                "observation.state": np.zeros(7, np.float32),
                "observation.environment_state": np.zeros(8, np.float32),
                "action": np.zeros(7, np.float32),
                "executed_action": np.zeros(7, np.float32),
                "scene_seed": np.zeros(1, np.int64),
                "task": "t",
            }
        )
        raise KeyboardInterrupt
    assert not target.exists() and list(tmp_path.iterdir()) == []
    assert load_dataset(root / "demos").meta.total_episodes == 2  # earlier datasets intact
