import numpy as np
import pytest

from data.dataset import create_dataset, demo_features, load_dataset
from data.generate import generate_demos
from sim.env import TabletopEnv


def test_demos_load_through_lerobot_with_the_right_frames(datasets, cfg):
    root, summary, _ = datasets
    ds = load_dataset(root / "demos", required_keys=cfg.keys)
    assert ds.meta.total_episodes == 2 and len(ds) == summary["frames"]
    assert ds.meta.fps == 5 and set(ds.meta.video_keys) == {"observation.images.image"}

    # Replay the first demo's scene: generate_demos seeds attempt k with seed + k (k from 1), and here
    # every attempt succeeded, so demo 0 is attempt 1.
    assert summary["attempts"] == cfg.demos.episodes
    env = TabletopEnv("stack_block", "visual_matching")
    try:
        obs, _ = env.reset(seed=cfg.demos.seed + 1)
        other = env.reset(seed=cfg.demos.seed + 99)[0]["pixels"]["image"]
    finally:
        env.close()
    first = ds[0]
    assert first["task"] == "stack the green block on the yellow block"
    np.testing.assert_allclose(first["observation.state"].numpy(), obs["agent_pos"], atol=1e-6)
    decoded = (first["observation.images.image"].permute(1, 2, 0).numpy() * 255).astype(np.float32)
    err = np.abs(decoded - obs["pixels"]["image"]).mean()
    assert err < 6, f"decoded frame differs from the rendered one by {err:.1f} grey levels on average"
    assert err < np.abs(decoded - other).mean() / 2, "the decoded frame must match its own scene, not another"
    assert first["action"].shape == (7,) and first["observation.environment_state"].shape == (8,)


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


def test_corrupt_video_names_file_and_episode(datasets, tmp_path):
    import shutil

    root, _, _ = datasets
    copy = tmp_path / "demos"
    shutil.copytree(root / "demos", copy)
    video = next(copy.rglob("*.mp4"))
    video.write_bytes(video.read_bytes()[:200])
    with pytest.raises(ValueError, match=rf"episode 0.*corrupt.*{video.name}"):
        load_dataset(copy)
    video.unlink()
    with pytest.raises(FileNotFoundError, match=rf"episode 0.*missing.*{video.name}"):
        load_dataset(copy)


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
                "task": "t",
            }
        )
        raise KeyboardInterrupt
    assert not target.exists() and list(tmp_path.iterdir()) == []
    assert load_dataset(root / "demos").meta.total_episodes == 2  # earlier datasets intact
