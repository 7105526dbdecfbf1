"""Label every frame transition of a LeRobotDataset with the latent actions of a trained model.

    python -m world_model.lam.label                                     # demos, with outputs/lam
    python -m world_model.lam.label label.dataset=outputs/datasets/video label.checkpoint=outputs/lam

Writes one safetensors file (default `<checkpoint>/labels/<dataset>.safetensors`, atomically) with,
for every frame i of the dataset in its own order:
    codes          (F, N) int64   codes of the transition i -> i+k, k the model's frame_stride (1 by
                                  default; -1 on the last k frames of an episode)
    episode_index  (F,)   int64
    frame_index    (F,)   int64
and the model's codebook (`codebook`, (num_codes, code_dim)) so a consumer can turn codes into latents
without loading the model. A continuous model (quantizer none) has no codes: its file holds
    latents        (F, N, code_dim) float32   the inverse dynamics' latents (NaN on the last k frames)
instead of codes and codebook, which the backbone regresses. Episodes are cut into windows of the
model's clip length that share their boundary frame, so each transition is labelled once; the encoder
is causal in time, so a transition's label depends on the frames before it in its window, never on
later ones.
"""

import json
import os
import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from safetensors.torch import save_file
from tqdm import tqdm

from data.clips import episode_columns, load_episode_frames
from world_model.lam.model import LatentActionModel, load_lam


def window_starts(length: int, clip_len: int) -> list[tuple[int, int]]:
    """(start, frames) windows covering every transition of an episode of `length` frames once."""
    step = clip_len - 1
    return [(s, min(clip_len, length - s)) for s in range(0, length - 1, step)]


@torch.no_grad()
def encode_transitions(
    model: LatentActionModel, frames: torch.Tensor, batch_size: int = 64
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One episode (L, 3, H, W) uint8 -> codes (L, N) of each transition i -> i+k (k: the model's
    frame_stride; None for a continuous model) and the inverse dynamics' latents before quantization
    (L, N, code_dim); the last k rows, which have no frame k steps on, are -1 (codes) and 0 (latents)."""
    k, N, D = model.cfg.frame_stride, model.cfg.tokens_per_step, model.cfg.code_dim
    codes = torch.full((len(frames), N), -1, dtype=torch.long)
    latents = torch.zeros(len(frames), N, D)
    for offset in range(min(k, len(frames))):  # a stride-k model reads every k-th frame, from each offset
        sub_codes, sub_latents = encode_consecutive(model, frames[offset::k], batch_size)
        codes[offset::k], latents[offset::k] = sub_codes, sub_latents
    return (None if model.cfg.continuous else codes), latents


def encode_consecutive(
    model: LatentActionModel, frames: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """encode_transitions of frames the model reads as consecutive: windows of clip_len frames that
    overlap by one cover every transition once. (A continuous model's codes stay -1: it has none.)"""
    T, N, D = model.cfg.clip_len, model.cfg.tokens_per_step, model.cfg.code_dim
    codes = torch.full((len(frames), N), -1, dtype=torch.long)
    latents = torch.zeros(len(frames), N, D)
    by_length: dict[int, list[int]] = {}
    for start, n in window_starts(len(frames), T):
        by_length.setdefault(n, []).append(start)
    for n, starts in by_length.items():  # windows of one length go through the model together
        for chunk in torch.tensor(starts).split(batch_size):
            clips = frames[chunk[:, None] + torch.arange(n)].float() / 255  # (B, n, 3, H, W)
            model.check_frames(clips)
            z = model.idm(clips)  # (B, n-1, N, D)
            batch_codes = model.quantizer(z).codes  # (B, n-1, N); None when continuous
            for i, start in enumerate(chunk.tolist()):
                if batch_codes is not None:
                    codes[start : start + n - 1] = batch_codes[i]
                latents[start : start + n - 1] = z[i]
    return codes, latents


def latent_labels(model: LatentActionModel, frames: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """One episode (L, 3, H, W) uint8 -> the label of each transition i -> i+k: codes (L, N), -1 on the
    last k rows; or for a continuous model its latents (L, N, code_dim), NaN on the last k rows."""
    codes, latents = encode_transitions(model, frames, batch_size)
    if codes is not None:
        return codes
    latents[-model.cfg.frame_stride :] = float("nan")
    return latents


def label_dataset(model: LatentActionModel, root: str | Path, image_key: str, batch_size: int = 64) -> dict:
    """Codes (or a continuous model's latents) for every frame of a dataset, aligned with its frame order
    (see the module docstring)."""
    episode_frames = load_episode_frames(root, image_key)
    size = model.cfg.image_size
    first = next(iter(episode_frames.values()))
    if tuple(first.shape[-2:]) != (size, size):
        raise ValueError(
            f"{image_key!r} in {root} is {first.shape[-2]}x{first.shape[-1]}, the model takes {size}x{size}"
        )
    columns = episode_columns(root, [])
    labels = torch.cat(
        [
            latent_labels(model, f, batch_size)
            for f in tqdm(episode_frames.values(), desc="labelling", unit="ep")
        ]
    )
    if len(labels) != len(columns["episode_index"]):
        raise RuntimeError(
            f"decoded {len(labels)} frames but the dataset table has {len(columns['episode_index'])}"
        )
    return {
        ("latents" if model.cfg.continuous else "codes"): labels,
        "episode_index": torch.from_numpy(columns["episode_index"].astype(np.int64)),
        "frame_index": torch.from_numpy(columns["frame_index"].astype(np.int64)),
    }


def write_labels(labels: dict, model: LatentActionModel, path: Path, meta: dict) -> None:
    tensors = dict(labels)
    if not model.cfg.continuous:
        codebook = model.latents_from_codes(torch.arange(model.quantizer.num_codes))
        tensors["codebook"] = codebook.contiguous()
    save_labels(tensors, path, meta)


def save_labels(tensors: dict, path: Path, meta: dict) -> None:
    """Write a labels file atomically (a temporary file, then renamed), `meta` as JSON in its header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, tmp, metadata={k: json.dumps(v) for k, v in meta.items()})
    os.replace(tmp, path)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    model = load_lam(cfg.label.checkpoint)
    dataset = Path(cfg.label.dataset)
    out = (
        Path(cfg.label.out)
        if cfg.label.out
        else Path(cfg.label.checkpoint) / "labels" / f"{dataset.name}.safetensors"
    )
    labels = label_dataset(model, dataset, cfg.task.image_key, cfg.label.batch_size)
    meta = {
        "checkpoint": str(cfg.label.checkpoint),
        "dataset": str(dataset),
        "model_config": model.cfg.to_dict(),
    }
    write_labels(labels, model, out, meta)
    if model.cfg.continuous:
        valid = labels["latents"][~labels["latents"][:, 0, 0].isnan()]
        print(f"labelled {len(valid)} transitions of {dataset} with continuous latents -> {out}")
    else:
        valid = labels["codes"][labels["codes"][:, 0] >= 0]
        used = torch.unique(valid).numel()
        print(
            f"labelled {len(valid)} transitions of {dataset} ({used}/{model.quantizer.num_codes} codes used) -> {out}"
        )
    print("command: python -m world_model.lam.label " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
