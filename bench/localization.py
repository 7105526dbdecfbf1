"""How precisely can an encoder see the scene at 64x64, given the demos? (image policies' localization gate)

    python -m bench.localization --dataset outputs/bench/ceiling/demos     # -> reports/bench/localization.json

A supervised ceiling, not a policy. Each encoder, from random weights, is trained to regress the source
and target objects' x, y (the privileged `observation.environment_state`) and the hand's x, y
(`observation.state`) from frame t alone, on 70% of the demo episodes, and is scored on the other 30%:
RMS error in cm per quantity, beside the constant predictor's (the training mean). An image policy's
encoder learns position only through the action loss; if even direct supervision cannot place the
objects within the tasks' ~2 cm, no policy built on that encoder will, and if it can, the policy's
failure lies in what its loss teaches, not in what the pixels hold.

Encoders: `vit`, the policies' backbone (world_model.backbone, patch tokens unpooled, a linear head on
them all), and `cnn`, a small convolutional stem with spatial-softmax keypoints (robomimic's and
Diffusion Policy's choice for low-resolution control), and `cnn_fine`, the same with its keypoints on a
32x32 map instead of 16x16.

    python -m bench.localization --backbone outputs/backbone --encoders ""   # the feature probe

With `--backbone`, the probe of pretrained features: the backbone (trained on actionless video only) is
frozen and probed on the same 70% / 30% of the demo episodes, beside the same probe on the same
architecture with random weights, which tells what pretraining added. A conv stem without keypoints (the
CPU profile) gets a linear heatmap probe of its 32x32 map: per task, a 1x1 convolution to one map per
quantity, fitted by cross-entropy to Gaussians at the quantities' pixels (projected with the task's
camera), its soft-argmax seen on the table at the true height; keypoints or patch tokens feed an MLP
probe with the instruction's task.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from bench.common import compose_config, save_figure, stamp, write_report
from data.camera import PinholeCamera
from data.chunks import EpisodeBank, split_episodes
from policies.vipra.configuration_vipra import ENV_STATE_KEY, STATE_KEY
from world_model.backbone.model import BackboneConfig, VideoBackbone, keypoint_vector, load_backbone, tokenize
from world_model.layers import SpatialSoftmax, heatmap_cross_entropy, heatmap_targets, soft_argmax
from world_model.training.schedule import warmup_cosine

QUANTITIES = ("source_xy", "target_xy", "hand_xy")
IMAGE_KEY = "observation.images.image"


def targets_of(bank: EpisodeBank) -> torch.Tensor:
    """(F, 6) metres: source x, y, target x, y (environment_state 0:2, 4:6) and hand x, y (state 0:2)."""
    env, state = bank.columns[ENV_STATE_KEY], bank.columns[STATE_KEY]
    return torch.cat([env[:, 0:2], env[:, 4:6], state[:, 0:2]], dim=1).float()


class ConvKeypoints(nn.Module):
    """64x64 frame -> 6 positions: conv stem to a 16x16 map (32x32 with `fine`), 32 spatial-softmax
    keypoints, an MLP."""

    def __init__(self, channels: int = 64, keypoints: int = 32, fine: bool = False):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels // 2, 5, stride=2, padding=2), nn.GELU(),
            nn.Conv2d(channels // 2, channels, 3, stride=1 if fine else 2, padding=1), nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.GELU(),
            nn.Conv2d(channels, keypoints, 1),
        )  # fmt: skip
        self.keypoints = SpatialSoftmax()
        self.head = nn.Sequential(
            nn.Linear(2 * keypoints, 256), nn.GELU(), nn.Linear(256, len(QUANTITIES) * 2)
        )

    def forward(self, frames: torch.Tensor, tasks: list[str]) -> torch.Tensor:
        return self.head(self.keypoints(self.stem(frames * 2 - 1)))


class BackboneRegressor(nn.Module):
    """The policies' backbone on frame t (no motion: t-1 = t) and the instruction, a linear head on its
    unpooled patch tokens."""

    def __init__(self, image_size: int):
        super().__init__()
        self.backbone = VideoBackbone(BackboneConfig(image_size=image_size, pool=1))
        cfg = self.backbone.cfg
        self.head = nn.Linear(cfg.num_patches * cfg.dim, len(QUANTITIES) * 2)

    def forward(self, frames: torch.Tensor, tasks: list[str]) -> torch.Tensor:
        cfg = self.backbone.cfg
        words = tokenize(tasks, cfg.vocab_size).to(frames.device)
        out = self.backbone(torch.stack([frames, frames], dim=1), words)
        return self.head(out.hidden[:, : cfg.num_patches].flatten(1))


ENCODERS = {
    "cnn": lambda size: ConvKeypoints(),
    "cnn_fine": lambda size: ConvKeypoints(fine=True),  # keypoints on a 32x32 map: small objects
    "vit": BackboneRegressor,
}


def rms_cm(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Per quantity, the RMS of the x-y distance, in cm."""
    err = ((pred - target) ** 2).view(len(pred), len(QUANTITIES), 2).sum(-1).mean(0).sqrt() * 100
    return {q: round(float(e), 2) for q, e in zip(QUANTITIES, err, strict=True)}


def fit_encoder(name: str, train: EpisodeBank, held: EpisodeBank, steps: int, batch: int, seed: int) -> dict:
    """Train encoder `name` on `train`'s frames, score it on `held`'s; returns RMS in cm and minutes."""
    torch.manual_seed(seed)
    y_train = targets_of(train)
    mean, std = y_train.mean(0), y_train.std(0).clamp_min(1e-3)
    model = ENCODERS[name](train.frames.shape[-1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: warmup_cosine(k, steps, warmup, 0.1))
    gen, clock, losses = torch.Generator().manual_seed(seed), time.perf_counter(), []
    model.train()
    for _ in tqdm(range(steps), desc=f"localization {name}", mininterval=5):
        rows = torch.randint(len(train), (batch,), generator=gen)
        frames = train.frames[rows].float() / 255
        pred = model(frames, [train.tasks[i] for i in rows.tolist()])
        loss = F.mse_loss(pred, (y_train[rows] - mean) / std)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        pred = torch.cat(
            [
                model(held.frames[rows].float() / 255, [held.tasks[i] for i in rows.tolist()])
                for rows in torch.arange(len(held)).split(256)
            ]
        )
    tail = losses[-max(1, steps // 10) :]
    return {
        "rms_cm": rms_cm(pred * std + mean, targets_of(held)),
        "final_train_loss": sum(tail) / len(tail),  # normalized units, mean over the last tenth of steps
        "parameters": sum(p.numel() for p in model.parameters()),
        "minutes": (time.perf_counter() - clock) / 60,
    }


@torch.no_grad()
def frozen_features(backbone: VideoBackbone, bank: EpisodeBank) -> torch.Tensor:
    """(F, D) per demo frame: the backbone's keypoints (with their descriptors) on frames t-1, t, or its
    patch tokens without keypoints."""
    backbone.eval()
    out = []
    for rows in torch.arange(len(bank)).split(256):
        frames = bank.frames[bank.window(rows, 1).context].float() / 255  # (B, 2, 3, H, W)
        words = tokenize([bank.tasks[i] for i in rows.tolist()], backbone.cfg.vocab_size)
        result = backbone(frames, words)
        P = backbone.cfg.num_patches
        out.append(
            keypoint_vector(result) if result.keypoints is not None else result.hidden[:, :P].flatten(1)
        )
    return torch.cat(out)


def fit_probe(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_held: torch.Tensor,
    steps: int = 3000,
    batch: int = 256,
    seed: int = 0,
) -> torch.Tensor:
    """An MLP from frozen features (with the task one-hot in them) to the positions; its held-out output."""
    torch.manual_seed(seed)
    mu, sd = x_train.mean(0), x_train.std(0)
    sd = torch.where(
        sd > 1e-6, sd, 1.0
    )  # a feature constant in training (a task absent there) stays unscaled
    y_mu, y_sd = y_train.mean(0), y_train.std(0).clamp_min(1e-3)
    probe = nn.Sequential(
        nn.Linear(x_train.shape[1], 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, y_train.shape[1])
    )  # fmt: skip
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: warmup_cosine(k, steps, 100, 0.05))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = torch.randint(len(x_train), (batch,), generator=gen)
        loss = F.mse_loss(probe((x_train[rows] - mu) / sd), (y_train[rows] - y_mu) / y_sd)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        return probe((x_held - mu) / sd) * y_sd + y_mu


@torch.no_grad()
def draw_keypoints(backbone: VideoBackbone, bank: EpisodeBank, path: Path, scenes: int = 8) -> None:
    """A figure of what the keypoints track: demo frames with the keypoints over them, and under them the
    frame the keypoint decoder draws back from those keypoints alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    K = backbone.cfg.keypoints
    starts = bank.episode_start.unique()
    starts = starts[torch.linspace(0, len(starts) - 1, scenes).long()]
    rows = torch.minimum(starts + 20, bank.episode_end[starts])  # 20 steps in: the hand has moved
    frames = bank.frames[bank.window(rows, 1).context].float() / 255
    out = backbone(frames, tokenize([bank.tasks[i] for i in rows.tolist()], backbone.cfg.vocab_size))
    drawn = backbone.keypoint_decoder(out.keypoints, out.descriptors).clamp(0, 1)
    fig, axes = plt.subplots(2, scenes, figsize=(1.6 * scenes, 3.4))
    size = frames.shape[-1] - 1
    for j in range(scenes):
        x, y = ((out.keypoints[j] + 1) / 2 * size).split(K)
        axes[0, j].imshow(frames[j, 1].permute(1, 2, 0))
        axes[0, j].scatter(x, y, c=range(K), cmap="tab20", s=6)
        axes[1, j].imshow(drawn[j].permute(1, 2, 0))
        for ax in axes[:, j]:
            ax.axis("off")
    axes[0, 0].set_title("keypoints", fontsize=8, loc="left")
    axes[1, 0].set_title("drawn back from them", fontsize=8, loc="left")
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


TABLE_POINTS = {"source_xy": (0, 3), "target_xy": (4, 7)}  # environment_state slices of the objects' x, y, z


def labelled_points(bank: EpisodeBank) -> torch.Tensor:
    """(F, 3, 3) metres: the object to pick, the place and the hand (QUANTITIES' order), x, y, z."""
    env, state = bank.columns[ENV_STATE_KEY], bank.columns[STATE_KEY]
    return torch.stack([env[:, 0:3], env[:, 4:7], state[:, 0:3]], dim=1).float()


@torch.no_grad()
def stem_maps(backbone: VideoBackbone, bank: EpisodeBank) -> torch.Tensor:
    """(F, c, g, g) the frozen conv stem's map of every demo frame (with frame t-1)."""
    backbone.eval()
    out = []
    for rows in torch.arange(len(bank)).split(256):
        frames = bank.frames[bank.window(rows, 1).context].float() / 255
        words = tokenize([bank.tasks[i] for i in rows.tolist()], backbone.cfg.vocab_size)
        out.append(backbone(frames, words).fmap)
    return torch.cat(out)


def heatmap_probe(
    train_maps: torch.Tensor,
    train_uv: torch.Tensor,
    train_task: torch.Tensor,
    held_maps: torch.Tensor,
    held_task: torch.Tensor,
    tasks: int,
    steps: int,
    seed: int,
) -> torch.Tensor:
    """A linear heatmap probe: per task, a 1x1 convolution of the frozen map to one map per quantity,
    fitted by cross-entropy against Gaussians at their pixels (train_uv (F, Q, 2) in [-1, 1]); returns
    the held-out maps' soft-argmax (F, Q, 2)."""
    torch.manual_seed(seed)
    Q, c = train_uv.shape[1], train_maps.shape[1]
    probe = nn.Conv2d(c, tasks * Q, 1)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: warmup_cosine(k, steps, 50, 0.05))
    gen = torch.Generator().manual_seed(seed)

    def maps_of(x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        logits = probe(x).unflatten(1, (tasks, Q))  # (B, tasks, Q, g, g)
        return logits[torch.arange(len(x)), task]  # (B, Q, g, g): the frame's task's probe

    for _ in range(steps):
        rows = torch.randint(len(train_maps), (256,), generator=gen)
        logits = maps_of(train_maps[rows], train_task[rows])
        target = heatmap_targets(train_uv[rows], logits.shape[-1])
        loss = heatmap_cross_entropy(logits.flatten(0, 1), target.flatten(0, 1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        return torch.cat(
            [
                soft_argmax(maps_of(held_maps[r], held_task[r]))
                for r in torch.arange(len(held_maps)).split(512)
            ]
        )


def probe_stem(
    backbone: VideoBackbone,
    train: EpisodeBank,
    held: EpisodeBank,
    camera: PinholeCamera,
    steps: int,
    seed: int,
) -> dict[str, float]:
    """Held-out RMS cm of the linear heatmap probe on the backbone's frozen stem map: each quantity's peak
    seen on the table at its true height through the camera."""
    names = sorted(set(train.tasks) | set(held.tasks))
    task_index = lambda bank: torch.tensor([names.index(t) for t in bank.tasks])  # noqa: E731
    points = {name: labelled_points(bank) for name, bank in (("train", train), ("held", held))}
    train_uv = torch.from_numpy(
        camera.to_unit(camera.project(points["train"].reshape(-1, 3).double().numpy()))
    )
    uv = heatmap_probe(
        stem_maps(backbone, train), train_uv.float().view(-1, 3, 2), task_index(train),
        stem_maps(backbone, held), task_index(held), len(names), steps, seed,
    )  # fmt: skip
    truth = points["held"].double().numpy()
    pixels = (uv.double().numpy() + 1) * camera.image_size / 2
    report = {}
    for j, name in enumerate(QUANTITIES):
        seen = camera.backproject(pixels[:, j], truth[:, j, 2])
        report[name] = round(float(100 * (((seen - truth[:, j]) ** 2)[:, :2].sum(-1).mean() ** 0.5)), 2)
    return report


def task_one_hot(bank: EpisodeBank, tasks: list[str]) -> torch.Tensor:
    return torch.tensor([[float(t == name) for name in tasks] for t in bank.tasks])


def probe_backbone(
    path: str,
    train: EpisodeBank,
    held: EpisodeBank,
    seed: int,
    steps: int = 3000,
    figure: Path | None = None,
    camera: PinholeCamera | None = None,
) -> dict:
    """RMS cm of the probe on the pretrained backbone's frozen features and on a random-weight twin: with
    a conv stem and a `camera`, the linear heatmap probe of its map (`probe_stem`); otherwise an MLP on
    its keypoints or patch tokens. With `figure` (keypoints only), what its keypoints track."""
    pretrained = load_backbone(path)
    if pretrained.cfg.image_size != train.frames.shape[-1]:
        raise ValueError(
            f"the backbone at {path} takes {pretrained.cfg.image_size}x{pretrained.cfg.image_size} frames, "
            f"the demos are {train.frames.shape[-1]}x{train.frames.shape[-1]}"
        )
    torch.manual_seed(seed)
    backbones = {"pretrained": pretrained, "random_init": VideoBackbone(pretrained.cfg)}
    tasks = sorted(set(train.tasks))
    if camera is not None and pretrained.cfg.stem == "conv" and not pretrained.cfg.keypoints:
        report = {"backbone": str(path), "features": "stem map (linear heatmap probe)", "probe_steps": steps}
        for name, backbone in backbones.items():
            report[name] = probe_stem(backbone, train, held, camera, steps, seed)
        return report
    report = {"backbone": str(path), "features": "keypoints" if pretrained.cfg.keypoints else "patch tokens"}
    for name, backbone in backbones.items():
        x_train = torch.cat([frozen_features(backbone, train), task_one_hot(train, tasks)], dim=1)
        x_held = torch.cat([frozen_features(backbone, held), task_one_hot(held, tasks)], dim=1)
        predicted = fit_probe(x_train, targets_of(train), x_held, steps, seed=seed)
        report[name] = rms_cm(predicted, targets_of(held))
    if figure is not None and pretrained.cfg.keypoints:
        draw_keypoints(pretrained, held, figure)
    return report


def task_camera(bank: EpisodeBank) -> PinholeCamera | None:
    """The default task's camera calibration (conf/task `camera`) at the demos' image size, or None."""
    camera = compose_config().task.get("camera")
    return PinholeCamera.from_config(camera, bank.frames.shape[-1]) if camera else None


def run(
    dataset: str,
    encoders: list[str],
    steps: int,
    batch: int,
    held_fraction: float,
    seed: int,
    backbone: str | None = None,
    probe_steps: int = 3000,
    figure: Path | None = None,
    camera: PinholeCamera | None = None,
) -> dict:
    """`camera`: the task's calibration for the stem-map probe (default: the root config's task)."""
    unknown = sorted(set(encoders) - set(ENCODERS))
    if unknown:
        raise ValueError(f"unknown encoders {unknown}; expected some of {sorted(ENCODERS)}")
    bank = EpisodeBank.load(dataset, IMAGE_KEY, columns=[STATE_KEY, ENV_STATE_KEY])
    episodes = bank.episodes
    train_pos, held_pos = split_episodes(len(episodes), held_fraction, seed)
    train, held = bank.subset([episodes[i] for i in train_pos]), bank.subset([episodes[i] for i in held_pos])
    y_held = targets_of(held)
    report = {
        "constant_rms_cm": rms_cm(targets_of(train).mean(0).expand_as(y_held), y_held),
        "encoders": {name: fit_encoder(name, train, held, steps, batch, seed) for name in encoders},
        **(
            {
                "feature_probe": probe_backbone(
                    backbone, train, held, seed, probe_steps, figure, camera or task_camera(bank)
                )
            }
            if backbone
            else {}
        ),
        "train_frames": len(train),
        "held_out_frames": len(held),
        "held_out_episodes": len(held_pos),
        "steps": steps,
        "batch_size": batch,
        "dataset": dataset,
    }
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dataset",
        default="outputs/bench/ceiling/demos",
        help="a demo LeRobotDataset (make bench-ceiling's)",
    )
    parser.add_argument("--encoders", default="cnn,vit", help="comma-separated, from: " + ", ".join(ENCODERS))
    parser.add_argument("--backbone", default=None, help="a pretrained backbone run to probe (frozen)")
    parser.add_argument(
        "--figure",
        default=None,
        help="with --backbone (keypoints): what they track in held-out scenes, a png",
    )
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--probe-steps", type=int, default=3000, help="the feature probe's MLP steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--held-fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="reports/bench/localization.json")
    args = parser.parse_args(argv)  # (a folder that is no LeRobotDataset: load_metadata names it)
    encoders = [name for name in args.encoders.split(",") if name]
    report = run(
        args.dataset,
        encoders,
        args.steps,
        args.batch_size,
        args.held_fraction,
        args.seed,
        args.backbone,
        args.probe_steps,
        Path(args.figure) if args.figure else None,
    )
    report |= stamp("python -m bench.localization " + " ".join(sys.argv[1:] if argv is None else argv))
    write_report(Path(args.out), report)
    shown = ("constant_rms_cm", "encoders", "feature_probe")
    print(json.dumps({k: report[k] for k in shown if k in report}, indent=1))
    return report


if __name__ == "__main__":
    main()
