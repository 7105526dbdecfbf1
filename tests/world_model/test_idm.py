"""The inverse dynamics model (ours_idm's labeller): it reads motion off two frames, trains on the first n
demos through the shared trainer, labels the video in the continuous-latent layout the backbone reads."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from world_model.idm.model import IDMConfig, InverseDynamics
from world_model.idm.train import split_demos


def squares(n: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A bright 4x4 square and the same square moved by an action (dx, dy) in [-3, 3] pixels."""
    before, after = torch.zeros(n, 3, size, size), torch.zeros(n, 3, size, size)
    where = torch.randint(4, size - 8, (n, 2))
    moves = torch.randint(-3, 4, (n, 2))
    for i, ((x, y), (dx, dy)) in enumerate(zip(where.tolist(), moves.tolist(), strict=True)):
        before[i, :, y : y + 4, x : x + 4] = 1.0
        after[i, :, y + dy : y + dy + 4, x + dx : x + dx + 4] = 1.0
    return before, after, moves[:, None].float()  # actions (n, k=1, 2)


def test_reads_the_motion_between_two_frames():
    torch.manual_seed(0)
    model = InverseDynamics(IDMConfig(image_size=32, action_dim=2, channels=8, hidden=64))
    model.action_std.fill_(2.0)  # the moves' spread: the loss sees unit-scale targets
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model.compute_loss(*squares(64))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    before, after, moves = squares(256)
    error = (model.predict(before, after) - moves).pow(2).mean()
    assert error < 0.2 * moves.var()  # R^2 > 0.8 on squares it never saw


def test_bad_frames_and_demo_counts_are_named():
    model = InverseDynamics(IDMConfig(image_size=32, action_dim=2))
    with pytest.raises(ValueError, match=r"before and after must both be \(B, 3, 32, 32\)"):
        model(torch.zeros(2, 3, 64, 64), torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="multiple of 16"):
        IDMConfig(image_size=40)
    assert split_demos(list(range(10)), 4, 3) == ([0, 1, 2, 3], [7, 8, 9])
    assert split_demos(list(range(10)), None, 3) == (list(range(10)), [])  # every demo trained on
    with pytest.raises(ValueError, match="train.idm.demos=11: the dataset holds 10 demos"):
        split_demos(list(range(10)), 11, 3)


def test_trains_on_the_demos_and_labels_the_video_for_the_backbone(datasets, tmp_path):
    from world_model.backbone.train import load_labelled_video
    from world_model.idm.label import label_dataset
    from world_model.idm.model import load_idm
    from world_model.idm.train import train
    from world_model.lam.label import save_labels

    root = datasets[0]
    tcfg = OmegaConf.load("conf/train/idm/cpu.yaml")
    tcfg.merge_with(
        {
            "dataset": str(root / "demos"),
            "demos": 1,
            "out_dir": str(tmp_path / "idm"),
            "steps": 3,
            "batch_size": 4,
            "lr_warmup": 1,
            "log_every": 1,
            "val_every": 2,
            "ckpt_every": 2,
        }
    )
    task = {"image_key": "observation.images.image", "action_key": "action"}
    model = {"image_size": 64, "frame_stride": 2, "channels": 8, "hidden": 32}
    summary = train(OmegaConf.create({"model": {"idm": model}, "train": {"idm": tcfg}, "task": task}))
    assert np.isfinite(summary["r2_translation"]) and summary["heldout_demos"] == 1  # demo 1 of 2, unseen
    idm = load_idm(tmp_path / "idm")
    assert idm.cfg.action_dim == 7 and idm.action_std.min() > 0  # the demos' statistics saved with it
    assert idm.action_varies.tolist() == [True, True, True, False, False, True, True]  # no roll, no pitch
    labels = label_dataset(idm, root / "video", "observation.images.image")
    latents, episodes = labels["latents"], labels["episode_index"].numpy()
    ends = np.r_[np.flatnonzero(episodes[1:] != episodes[:-1]), len(episodes) - 1]  # each episode's last row
    rows = np.arange(len(episodes))
    unlabelled = torch.from_numpy(ends[np.searchsorted(ends, rows)] - rows < 2)  # no frame 2 steps on
    assert latents.shape == (len(episodes), 2, 7)  # the 2 actions of each transition t -> t+2
    assert latents[unlabelled].isnan().all() and latents[~unlabelled].isfinite().all()
    assert (latents[~unlabelled][..., 3:5] == 0).all()  # the demos never roll or pitch: neither do the labels
    save_labels(labels, tmp_path / "labels.safetensors", {})
    assert set(load_file(tmp_path / "labels.safetensors")) == {"latents", "episode_index", "frame_index"}
    _, shape = load_labelled_video(
        root / "video", tmp_path / "labels.safetensors", "observation.images.image", None
    )
    assert (
        shape["latent_dim"] == 7 and shape["tokens_per_step"] == 2
    )  # the backbone regresses them as latents
