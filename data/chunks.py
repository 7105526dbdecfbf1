"""The one in-memory loader of any LeRobotDataset v3 (`EpisodeBank`): chunks for the backbone, the
policy and the neural simulator (the context frames t-1 and t, the frame t+H and the H steps of
per-frame columns from t, for every frame t), and clips for the latent action model (`Clips`).

    bank = EpisodeBank.load("outputs/datasets/demos", "observation.images.image",
                            columns=["observation.state", "action"])
    idx = bank.window(torch.tensor([0, 5]), horizon=14)
    bank.frames[idx.context]   # (2, 2, 3, H, W) uint8: frames t-1 and t (t-1 = t at an episode's start)
    bank.columns["action"][idx.chunk]      # (2, 14, 7): steps t .. t+13, repeated past the episode's end
    idx.chunk_is_pad                       # (2, 14): True past the episode's end (LeRobot's action_is_pad)

Training from memory beats decoding a sample at a time: 100 demos of 64x64 frames are ~35 MB.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.clips import episode_columns, load_episode_frames
from data.dataset import load_metadata


def split_episodes(num_episodes: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A fixed random split of episode indices into (train, held out); at least one held out."""
    order = np.random.default_rng(seed).permutation(num_episodes)
    n_val = max(1, round(val_fraction * num_episodes))
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


@dataclass
class Window:
    context: torch.Tensor  # (B, 2) frame rows of t-1 and t
    future: torch.Tensor  # (B,) frame row of t+H (the episode's last frame if it ends sooner)
    chunk: torch.Tensor  # (B, H) rows of t .. t+H-1, clamped to the episode's last row
    chunk_is_pad: torch.Tensor  # (B, H) bool: the step lies past the episode's last frame


@dataclass
class EpisodeBank:
    frames: torch.Tensor  # (F, 3, H, W) uint8, episodes back to back in dataset order; (F, 0) if not loaded
    columns: dict[str, torch.Tensor]  # name -> (F, ...) per-frame values
    episode_start: torch.Tensor  # (F,) row of the first frame of each row's episode
    episode_end: torch.Tensor  # (F,) row of the last frame of each row's episode
    episode_index: torch.Tensor  # (F,)
    tasks: list[str]  # (F,) instruction of each row

    @classmethod
    def load(
        cls,
        root: str | Path,
        image_key: str | None,
        columns: list[str],
        episodes: list[int] | None = None,
        expect_lossless: bool = True,
    ) -> "EpisodeBank":
        """Decode the chosen episodes (default all) of a dataset with their `columns` and instructions;
        `expect_lossless` warns when the camera is a lossy video. `image_key=None` reads the columns
        only and decodes no video (`frames` is then an empty (F, 0) tensor)."""
        meta = load_metadata(root, required_keys=[k for k in (image_key, *columns) if k is not None])
        table = episode_columns(root, [*columns, "task_index"])
        keep = np.ones(len(table["episode_index"]), bool)
        if episodes is not None:
            keep = np.isin(table["episode_index"], episodes)
        chosen = sorted(set(table["episode_index"][keep].tolist()))
        if image_key is None:
            frames = torch.empty((int(keep.sum()), 0), dtype=torch.uint8)
        else:
            decoded = load_episode_frames(root, image_key, chosen, expect_lossless)
            frames = torch.cat([decoded[e] for e in chosen])
        task_names = {
            int(i): name for name, i in zip(meta.tasks.index, meta.tasks["task_index"], strict=True)
        }
        return cls.from_arrays(
            frames,
            {k: torch.from_numpy(np.asarray(table[k][keep], dtype=np.float32)) for k in columns},
            torch.from_numpy(table["episode_index"][keep].astype(np.int64)),
            [task_names[int(i)] for i in table["task_index"][keep]],
        )

    @classmethod
    def from_arrays(
        cls, frames, columns: dict, episode_index: torch.Tensor, tasks: list[str]
    ) -> "EpisodeBank":
        if not len(frames) == len(episode_index) == len(tasks) or any(
            len(v) != len(frames) for v in columns.values()
        ):
            raise ValueError(
                f"frames ({len(frames)}), episode_index ({len(episode_index)}), tasks ({len(tasks)}) and "
                f"columns { ({k: len(v) for k, v in columns.items()}) } must have one row per frame"
            )
        if len(episode_index) and (episode_index.diff() < 0).any():
            raise ValueError("episodes must be stored back to back in increasing order")
        new = torch.ones(len(episode_index), dtype=torch.bool)
        new[1:] = episode_index[1:] != episode_index[:-1]
        starts = torch.nonzero(new).flatten()
        lengths = torch.diff(starts, append=torch.tensor([len(episode_index)]))
        start = torch.repeat_interleave(starts, lengths)
        end = torch.repeat_interleave(starts + lengths - 1, lengths)
        return cls(frames, columns, start, end, episode_index, list(tasks))

    def __len__(self) -> int:
        return len(self.frames)

    def subset(self, episodes: list[int]) -> "EpisodeBank":
        keep = torch.isin(self.episode_index, torch.tensor(episodes, dtype=torch.long))
        rows = torch.nonzero(keep).flatten()
        return EpisodeBank.from_arrays(
            self.frames[rows],
            {k: v[rows] for k, v in self.columns.items()},
            self.episode_index[rows],
            [self.tasks[i] for i in rows.tolist()],
        )

    @property
    def episodes(self) -> list[int]:
        return torch.unique(self.episode_index).tolist()

    def window(self, rows: torch.Tensor, horizon: int) -> Window:
        """Rows (B,) of frames t -> the rows of its context, future frame and H-step chunk."""
        start, end = self.episode_start[rows], self.episode_end[rows]
        context = torch.stack([torch.maximum(rows - 1, start), rows], dim=1)
        steps = rows[:, None] + torch.arange(horizon)  # (B, H)
        return Window(
            context=context,
            future=torch.minimum(rows + horizon, end),
            chunk=torch.minimum(steps, end[:, None]),
            chunk_is_pad=steps > end[:, None],
        )


@dataclass
class Clips:
    """Every window of `clip_len` consecutive frames inside one episode of a bank, for the latent action
    model: a clip never straddles two episodes and never needs padding, so an episode shorter than the
    window gives none.

        clips = Clips.of(EpisodeBank.load("outputs/datasets/video", "observation.images.image", []), 8)
        clips.clips(torch.tensor([0, 5]))   # (2, 8, 3, H, W) float in [0, 1]
    """

    bank: EpisodeBank
    clip_len: int
    starts: torch.Tensor  # (M,) bank row of each clip's first frame, in dataset order
    stride: int = 1  # frames between a clip's frames

    @classmethod
    def of(cls, bank: EpisodeBank, clip_len: int, stride: int = 1) -> "Clips":
        """Every clip of `clip_len` frames `stride` frames apart (a clip spans (clip_len - 1) * stride steps)."""
        if clip_len < 2:
            raise ValueError(f"a clip needs clip_len >= 2 frames, got {clip_len}")
        if stride < 1:
            raise ValueError(f"a clip's frames must be stride >= 1 frames apart, got {stride}")
        rows = torch.arange(len(bank))
        starts = rows[rows + (clip_len - 1) * stride <= bank.episode_end]
        if not len(starts):
            raise ValueError(f"no episode has {(clip_len - 1) * stride + 1} frames: no clip can be sampled")
        return cls(bank, clip_len, starts, stride)

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def episodes(self) -> list[int]:
        return self.bank.episodes

    @property
    def clip_episode(self) -> torch.Tensor:
        """(M,) the episode of each clip."""
        return self.bank.episode_index[self.starts]

    def clips(self, idx: torch.Tensor) -> torch.Tensor:
        """(B,) clip indices -> (B, T, 3, H, W) float in [0, 1]"""
        frame_idx = self.starts[idx][:, None] + self.stride * torch.arange(self.clip_len)
        return self.bank.frames[frame_idx].float() / 255
