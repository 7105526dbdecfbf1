"""Writing and reading LeRobotDataset v3 through lerobot's own classes.

Datasets are local folders: nothing is fetched from a hub (HF_HUB_OFFLINE is set in data/__init__).
A dataset is written into a hidden temporary folder next to its destination and renamed when
`finalize()` is done, so a killed job never leaves a half-written dataset under the final name.
"""

import contextlib
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import av
from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

EXECUTED_ACTION_KEY = "executed_action"  # what the env was stepped with; `action` is the clean label
SCENE_SEED_KEY = "scene_seed"  # the env reset seed of the frame's episode: replaying rebuilds the frames
STATE_NAMES = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
ACTION_NAMES = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]
ENV_STATE_NAMES = ["src_x", "src_y", "src_z", "src_yaw", "tgt_x", "tgt_y", "tgt_z", "tgt_yaw"]


def image_feature(size: int, lossless: bool = True) -> dict:
    """A camera feature. Lossless: LeRobot's `image` dtype (PNG frames inside the parquet files), so
    the frames a policy trains on are the renders it is evaluated on, bit for bit; else an encoded
    video (lerobot's default codec, lossy: ~3/255 mean error at 64x64)."""
    dtype = "image" if lossless else "video"
    return {"dtype": dtype, "shape": (size, size, 3), "names": ["height", "width", "channels"]}


def demo_features(image_size: int, names: dict | None = None, lossless: bool = True) -> dict:
    """Labelled robot demonstrations: camera, robot state, privileged object state, the clean action
    label, the executed action and the episode's scene seed. `names` gives another suite's per-dimension
    names (state, environment_state, action); the tabletop's by default."""
    names = names or {"state": STATE_NAMES, "environment_state": ENV_STATE_NAMES, "action": ACTION_NAMES}

    def vector(key: str) -> dict:
        return {"dtype": "float32", "shape": (len(names[key]),), "names": list(names[key])}

    return {
        "observation.images.image": image_feature(image_size, lossless),
        "observation.state": vector("state"),
        "observation.environment_state": vector("environment_state"),
        "action": vector("action"),
        EXECUTED_ACTION_KEY: vector("action"),
        SCENE_SEED_KEY: {"dtype": "int64", "shape": (1,), "names": None},
    }


def video_features(image_size: int, lossless: bool = True) -> dict:
    """Actionless video: camera frames and which embodiment is in view (0 robot, 1 hand); no action."""
    return {
        "observation.images.image": image_feature(image_size, lossless),
        "embodiment": {"dtype": "int64", "shape": (1,), "names": None},
    }


@contextlib.contextmanager
def create_dataset(root: str | Path, features: dict, fps: int, robot_type: str) -> Iterator[LeRobotDataset]:
    """Yield a new LeRobotDataset written in a temporary folder; finalized and renamed to `root` on success.

    Refuses to overwrite an existing `root`. On error (or when killed) the temporary folder is
    removed or left hidden, and whatever was at other paths is untouched.
    """
    root = Path(root)
    if root.exists():
        raise FileExistsError(
            f"dataset path {root} already exists; refusing to overwrite it (delete it or pick another)"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        dataset = LeRobotDataset.create(
            repo_id=f"local/{root.name}",
            fps=fps,
            features=features,
            root=tmp,
            robot_type=robot_type,
            use_videos=True,
            video_backend="pyav",
        )
        yield dataset
        dataset.finalize()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, root)


def load_metadata(root: str | Path, required_keys: Sequence[str] = ()) -> LeRobotDatasetMetadata:
    """The metadata of a local LeRobotDataset v3, checking that the configured keys are there."""
    root = Path(root)
    if not (root / "meta" / "info.json").is_file():
        raise FileNotFoundError(f"{root} is not a LeRobotDataset v3 folder: meta/info.json is missing")
    meta = LeRobotDatasetMetadata(repo_id=f"local/{root.name}", root=root)
    missing = [k for k in required_keys if k not in meta.features]
    if missing:
        raise KeyError(f"dataset {root} has no feature(s) {missing}; it has {sorted(meta.features)}")
    return meta


def warn_if_lossy(meta: LeRobotDatasetMetadata, image_key: str, root: str | Path) -> None:
    """Warn when a camera the config wants lossless is stored as (lossy) video: its decoded frames
    differ from the renders a policy is evaluated on."""
    feature = meta.features.get(image_key, {})
    if feature.get("dtype") == "video":
        codec = (feature.get("info") or {}).get("video.codec", "unknown codec")
        warnings.warn(
            f"{image_key!r} in {root} is stored as {codec} video, which is lossy: its frames differ from "
            "fresh renders (regenerate with data.*.lossless_images=true, or set task.lossless_images=false "
            "to accept it)",
            stacklevel=2,
        )


def load_dataset(
    root: str | Path,
    required_keys: Sequence[str] = (),
    delta_timestamps: dict[str, list[float]] | None = None,
    episodes: list[int] | None = None,
    video_backend: str | None = "pyav",  # torchcodec needs system FFmpeg libraries; PyAV ships its own
) -> LeRobotDataset:
    """Open a local LeRobotDataset v3, checking that the configured keys and the video files are there."""
    root = Path(root)
    meta = load_metadata(root, required_keys)
    # Before LeRobotDataset: it would try to fetch a missing video from the hub instead of failing.
    check_videos(meta, root, episodes)
    return LeRobotDataset(
        repo_id=f"local/{root.name}",
        root=root,
        delta_timestamps=delta_timestamps,
        episodes=episodes,
        video_backend=video_backend,
    )


def check_videos(meta: LeRobotDatasetMetadata, root: Path, episodes: list[int] | None = None) -> None:
    """Every episode's video files exist and their first frame decodes; the error names the file and
    the episode. (Damage further inside a file shows only when those frames are read.)"""
    checked: set[Path] = set()
    for ep in episodes if episodes is not None else range(meta.total_episodes):
        for key in meta.video_keys:
            path = root / meta.get_video_file_path(ep, key)
            if path in checked:
                continue
            if not path.is_file():
                raise FileNotFoundError(f"video for episode {ep}, key {key!r} is missing: {path}")
            try:
                with av.open(str(path)) as container:
                    next(container.decode(video=0))
            except (
                av.error.FFmpegError,
                StopIteration,
                IndexError,
                OSError,
            ) as e:  # IndexError: no video stream
                raise ValueError(
                    f"video for episode {ep}, key {key!r} is corrupt or unreadable: {path} ({e})"
                ) from e
            checked.add(path)
