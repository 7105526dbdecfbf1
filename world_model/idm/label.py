"""Label every transition of a LeRobotDataset with a trained inverse dynamics model's pseudo-actions.

    python -m world_model.idm.label label.checkpoint=outputs/idm label.dataset=outputs/datasets/video

Writes one safetensors file (default `<checkpoint>/labels/<dataset>.safetensors`, atomically) in the layout
of a continuous latent action model's labels (`world_model/lam/label.py`), which the backbone reads alike:
    latents        (F, k, A) float32   the k actions of transition i -> i+k in the demos' units (NaN on the
                                       last k frames of an episode)
    episode_index  (F,)      int64
    frame_index    (F,)      int64
"""

import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from data.clips import episode_columns, load_episode_frames
from world_model.idm.model import InverseDynamics, load_idm
from world_model.lam.label import save_labels


@torch.no_grad()
def pseudo_actions(model: InverseDynamics, frames: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """One episode (L, 3, H, W) uint8 -> (L, k, A): the actions of each transition i -> i+k, NaN on the
    last k rows (no frame k steps on)."""
    k, A = model.cfg.frame_stride, model.cfg.action_dim
    out = torch.full((len(frames), k, A), float("nan"))
    for chunk in torch.arange(max(0, len(frames) - k)).split(batch_size):
        out[chunk] = model.predict(frames[chunk].float() / 255, frames[chunk + k].float() / 255)
    return out


def label_dataset(model: InverseDynamics, root: str | Path, image_key: str, batch_size: int = 256) -> dict:
    """Pseudo-actions for every frame of a dataset, aligned with its frame order."""
    episode_frames = load_episode_frames(root, image_key)
    columns = episode_columns(root, [])
    latents = torch.cat(
        [
            pseudo_actions(model, f, batch_size)
            for f in tqdm(episode_frames.values(), desc="labelling", unit="ep")
        ]
    )
    if len(latents) != len(columns["episode_index"]):
        raise RuntimeError(
            f"decoded {len(latents)} frames but the dataset table has {len(columns['episode_index'])}"
        )
    return {
        "latents": latents,
        "episode_index": torch.from_numpy(columns["episode_index"].astype(np.int64)),
        "frame_index": torch.from_numpy(columns["frame_index"].astype(np.int64)),
    }


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    model = load_idm(cfg.label.checkpoint)
    dataset = Path(cfg.label.dataset)
    out = Path(cfg.label.out or Path(cfg.label.checkpoint) / "labels" / f"{dataset.name}.safetensors")
    labels = label_dataset(model, dataset, cfg.task.image_key)
    meta = {
        "checkpoint": str(cfg.label.checkpoint),
        "dataset": str(dataset),
        "model_config": model.cfg.to_dict(),
    }
    save_labels(labels, out, meta)
    labelled = int((~labels["latents"][:, 0, 0].isnan()).sum())
    print(f"labelled {labelled} transitions of {dataset} with pseudo-actions -> {out}")
    print("command: python -m world_model.idm.label " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
