"""Reading a LeRobotDataset v3's frames and columns episode by episode (lerobot's own readers), random
shifts, and the optical-flow targets of the latent action model. `data.chunks.EpisodeBank` holds them
in memory for training."""

import io
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import pyarrow as pa
import torch
from datasets import Image
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.datasets.video_utils import decode_video_frames

from data.dataset import check_videos, load_metadata, warn_if_lossy


def flow_targets(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Dense optical flow from each first frame to its second frame with OpenCV's DIS (no weights).

    first, second: (N, H, W, 3) uint8 RGB. Returns (N, 2, H, W) float32, in pixels (dx, dy).
    """
    if first.shape != second.shape or first.ndim != 4 or first.shape[-1] != 3 or first.dtype != np.uint8:
        raise ValueError(
            f"need two (N, H, W, 3) uint8 RGB batches of one shape, got {first.shape} {first.dtype} "
            f"and {second.shape} {second.dtype}"
        )
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    flows = [
        dis.calc(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY), None)
        for a, b in zip(first, second, strict=True)
    ]
    return np.stack(flows).transpose(0, 3, 1, 2).astype(np.float32)


def to_uint8_hwc(frames: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) float in [0, 1] -> (..., H, W, 3) uint8, for flow_targets."""
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()


def load_episode_frames(
    root: str | Path,
    image_key: str = "observation.images.image",
    episodes: list[int] | None = None,
    expect_lossless: bool = True,
) -> dict[int, torch.Tensor]:
    """Every frame of the chosen episodes, decoded once: {episode: (L, 3, H, W) uint8}.

    Training from memory beats decoding a clip per sample (17k frames of 64x64 are ~200 MB). The
    metadata and the storage are lerobot's: PNG frames of an `image` feature come from the parquet
    files, an encoded `video` feature's from each episode's span of its (shared) video file, found from
    the episode table as LeRobotDataset does for a single item. `expect_lossless` warns about the latter.
    """
    root = Path(root)
    meta = load_metadata(root, required_keys=[image_key])
    chosen = list(range(meta.total_episodes) if episodes is None else episodes)
    if image_key in meta.image_keys:
        return _png_frames(root, image_key, chosen)
    if image_key not in meta.video_keys:
        raise ValueError(
            f"{image_key!r} in {root} is neither an image nor a video feature; cameras: "
            f"{meta.image_keys + meta.video_keys}"
        )
    if expect_lossless:
        warn_if_lossy(meta, image_key, root)
    check_videos(meta, root, chosen)
    out = {}
    for ep in chosen:
        row = meta.episodes[int(ep)]
        start = row[f"videos/{image_key}/from_timestamp"]
        timestamps = [start + i / meta.fps for i in range(row["length"])]
        path = root / meta.get_video_file_path(int(ep), image_key)
        out[int(ep)] = decode_video_frames(path, timestamps, 1e-4, "pyav", return_uint8=True)
    return out


def _png_frames(root: Path, image_key: str, episodes: list[int]) -> dict[int, torch.Tensor]:
    """The PNG frames of an `image` feature, read from the parquet files without decoding per item."""
    table = LeRobotDataset(repo_id=f"local/{root.name}", root=root, video_backend="pyav").hf_dataset
    table = table.select_columns([image_key, "episode_index"]).cast_column(image_key, Image(decode=False))
    index = np.asarray(table["episode_index"])
    out = {}
    for ep in episodes:
        rows = np.flatnonzero(index == ep)
        if len(rows) == 0:
            raise ValueError(f"episode {ep} has no frames in {root}")
        pngs = table.select(rows)[image_key]
        frames = np.stack([np.asarray(PIL.Image.open(io.BytesIO(p["bytes"])).convert("RGB")) for p in pngs])
        out[int(ep)] = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()  # (L, 3, H, W)
    return out


def episode_columns(root: str | Path, keys: list[str]) -> dict[str, np.ndarray]:
    """Non-video columns of a LeRobotDataset (e.g. state, action, embodiment) as arrays over all frames,
    with `episode_index` and `frame_index` for alignment with `load_episode_frames`."""
    meta = load_metadata(root, required_keys=keys)
    missing_video = [k for k in keys if k in meta.video_keys]
    if missing_video:
        raise ValueError(f"{missing_video} are video keys; use load_episode_frames for them")
    table = LeRobotDataset(repo_id=f"local/{Path(root).name}", root=root, video_backend="pyav").hf_dataset
    table = table.select_columns([*keys, "episode_index", "frame_index"]).with_format("arrow")
    return {k: arrow_to_numpy(table[k], k) for k in [*keys, "episode_index", "frame_index"]}


def arrow_to_numpy(column: pa.Array | pa.ChunkedArray, name: str = "column") -> np.ndarray:
    """An arrow column of scalars or (nested) fixed-length lists -> a (rows, *shape) array, read in one go:
    the datasets library's numpy format converts row by row (10 s for 15k frames here, 0.2 s this way)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    rows, shape, length = len(column), [], len(column)
    while (
        pa.types.is_fixed_size_list(column.type)
        or pa.types.is_list(column.type)
        or pa.types.is_large_list(column.type)
    ):
        column = column.flatten()
        if length == 0 or len(column) % length:
            raise ValueError(
                f"{name}: lists of unequal lengths cannot form an array ({len(column)} values, {length} lists)"
            )
        shape.append(len(column) // length)
        length = len(column)
    return column.to_numpy(zero_copy_only=False).reshape(rows, *shape)


def shift_offsets(n: int, pad: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """(2, n) random (x, y) offsets in [0, 2 pad] for `random_shift`; drawn for a whole global batch so
    data-parallel processes can each take their columns."""
    return torch.randint(0, 2 * pad + 1, (2, n), generator=gen)


def random_shift(
    frames: torch.Tensor, pad: int, gen: torch.Generator | None = None, offsets: torch.Tensor | None = None
) -> torch.Tensor:
    """Shift each sample's frames (B, ..., C, H, W) by one random offset of up to `pad` pixels, edges
    repeated (DrQ's augmentation): frames of a sample move together, so motion between them is kept.
    `offsets` (2, B) from `shift_offsets` fixes the offsets; otherwise they are drawn from `gen`."""
    if pad <= 0:
        return frames
    shape = frames.shape
    x = frames.reshape(shape[0], -1, *shape[-2:])  # (B, T*C, H, W)
    H, W = shape[-2:]
    x = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx, dy = (shift_offsets(shape[0], pad, gen) if offsets is None else offsets).tolist()
    out = torch.stack([x[i, :, y : y + H, c : c + W] for i, (c, y) in enumerate(zip(dx, dy, strict=True))])
    return out.reshape(shape)
