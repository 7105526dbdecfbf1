"""Finetune the ViPRA-style policy on labelled demos (or train it from scratch: Scratch-FM).

    python -m policies.train_policy                                              # from outputs/backbone
    python -m policies.train_policy train.policy.backbone=null train.policy.out_dir=outputs/policy_scratch
    python -m policies.train_policy train.policy.steps=100 train.policy.out_dir=/tmp/p
    python -m policies.train_policy experiment=ceiling train.policy.dataset=outputs/datasets/demos   # state_fm

Every frame t of the demos is a sample: frames t-1 and t, the state at t, the instruction and the
actions t .. t+H-1 (past the episode's end they repeat the last one and are masked, LeRobot's
`action_is_pad`). Batches are LeRobot batches, so `policy.forward` is the same one lerobot-train
calls. Images get a random shift of a few pixels. The backbone starts from the pretrained checkpoint
and learns at `model.policy.backbone_lr_scale` x lr (0 freezes it); with `backbone: null` it starts
from random weights and learns at the full rate (Scratch-FM); with `init_policy` the whole policy starts
from a trained one's weights (a second stage). A frozen backbone (lr scale 0, no shift) can read its features
from `feature_cache`, computed once per demo frame (policies/feature_cache.py). With `cotrain.weight` > 0 the
pretrained backbone keeps its own video loss on frames of the actionless video beside the policy's (`ours_cotrain`).
With `looks.prob` > 0 that share of the demo frames get new background colours and light (data/looks.py). Writes `<out_dir>/pretrained_model`
(`save_pretrained`: config.json + model.safetensors, and the processor pair that normalizes with the
demos' statistics, as lerobot-train writes it) and resumable training checkpoints in `<out_dir>/checkpoints/last`. With `model.policy.context=state` (state_fm) the
same loop trains the decoder on the privileged object poses instead of frames; with
`train.policy.ema.decay` the saved policy holds an exponential moving average of the weights. With
`train.policy.val_fraction` > 0 that share of the demos is held out, and the held-out loss and sampled
chunk error (against the constant action) are logged every `val_every` steps and in summary.json.
"""

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from lerobot.configs import FeatureType
from lerobot.utils.feature_utils import dataset_to_policy_features
from omegaconf import DictConfig, OmegaConf
from torch import nn

from data.camera import PinholeCamera
from data.chunks import EpisodeBank, split_episodes
from data.clips import random_shift, shift_offsets
from data.dataset import load_metadata
from data.looks import LookAugment, LookDraw
from policies.feature_cache import check_cacheable, load_or_compute
from policies.vipra import VipraConfig, VipraPolicy
from policies.vipra.configuration_vipra import ACTION_KEY, ENV_STATE_KEY, STATE_KEY
from policies.vipra.modeling_vipra import HAND_NOW, WAYPOINT_EVENTS, WAYPOINT_KEY, WAYPOINT_PAD_KEY
from policies.vipra.processor_vipra import MIN_STD, make_vipra_pre_post_processors
from world_model.backbone.train import Objective as VideoObjective
from world_model.backbone.train import load_labelled_video
from world_model.backbone.train import make_batch as make_video_batch
from world_model.training.schedule import warmup_cosine
from world_model.training.trainer import Trainer, TrainTask, millions, print_run

PRETRAINED_DIR = "pretrained_model"


def make_batch(
    bank: EpisodeBank,
    rows: torch.Tensor,
    horizon: int,
    image_key: str,
    shift: int,
    offsets: torch.Tensor | None = None,
    waypoints: "Waypoints | None" = None,
    looks: tuple[LookAugment, LookDraw] | None = None,
) -> dict:
    """Rows of frames t -> a LeRobot training batch; `offsets` (2, B) are the random shifts. With
    `image_key` None (the state context) the batch has the object poses instead of frames. With
    `waypoints` it has where the hand next closes and opens in the image, shifted with the frames. With
    `looks` (the augmentation and this batch's draw) the frames' colours and light change first."""
    w = bank.window(rows, horizon)
    batch = {
        STATE_KEY: bank.columns[STATE_KEY][rows],
        ACTION_KEY: bank.columns[ACTION_KEY][w.chunk],
        "action_is_pad": w.chunk_is_pad,
        "task": [bank.tasks[i] for i in rows.tolist()],
    }
    if image_key is None:
        return batch | {ENV_STATE_KEY: bank.columns[ENV_STATE_KEY][rows]}
    if shift > 0 and offsets is None:
        offsets = shift_offsets(len(rows), shift)
    frames = bank.frames[w.context].float() / 255  # (B, 2, 3, H, W)
    if looks is not None:
        frames = looks[0](frames, looks[1])
    frames = random_shift(frames, shift, offsets=offsets)
    if waypoints is not None:
        uv = waypoints.unit[rows]  # (B, 2, 2)
        if shift > 0:  # what was at pixel p is now at p - (offset - shift)
            uv = uv - 2 * (offsets.T[:, None].float() - shift) / frames.shape[-1]
        batch[WAYPOINT_KEY], batch[WAYPOINT_PAD_KEY] = uv, waypoints.is_pad[rows]
    return batch | {image_key: frames}


def next_gripper_events(bank: EpisodeBank, gripper_dim: int) -> torch.Tensor:
    """(F, 2) per frame row, the rows of the next frame in its episode at which the gripper command (action
    dim `gripper_dim`, closed at >= 0.5) closes and at which it opens, -1 where none follows: where the
    hand closes on the object to pick and where it lets go over the place (WAYPOINT_EVENTS)."""
    closed = (bank.columns[ACTION_KEY][:, gripper_dim] >= 0.5).tolist()
    starts, events, upcoming = bank.episode_start.tolist(), [], [-1, -1]
    for row in reversed(range(len(closed))):
        events.append(list(upcoming))
        if row == starts[row]:
            upcoming = [-1, -1]  # the previous episode's frames see none of this one's events
        elif closed[row] != closed[row - 1]:
            upcoming[0 if closed[row] else 1] = row
    return torch.tensor(events[::-1])


@dataclass
class Waypoints:
    """Per frame row of a bank, where the hand is at its next close and open (`next_gripper_events`): the
    robot's frame (F, 2, 3) metres, the image (F, 2, 2) in [-1, 1] through the camera, and (F, 2) True
    where no such event follows."""

    points: torch.Tensor
    unit: torch.Tensor
    is_pad: torch.Tensor

    def mean_heights(self) -> list[float]:
        """Per event, the hand's mean height (m) at it: the plane the policy sees that event's point on."""
        keep = (~self.is_pad).float()
        return ((self.points[..., 2] * keep).sum(0) / keep.sum(0).clamp_min(1)).tolist()

    @classmethod
    def of(
        cls, bank: EpisodeBank, gripper_dim: int, camera: PinholeCamera, hand: bool = False
    ) -> "Waypoints":
        """`hand`: a third point per row, the hand in that frame (the hand anchor's label, HAND_NOW)."""
        events = next_gripper_events(bank, gripper_dim)
        if hand:
            events = torch.cat([events, torch.arange(len(events))[:, None]], dim=1)
        points = bank.columns[STATE_KEY][:, :3][events.clamp_min(0)]  # (F, M, 3)
        unit = camera.to_unit(camera.project(points.reshape(-1, 3).double().numpy()))
        return cls(points, torch.from_numpy(unit).float().view(*events.shape, 2), events < 0)


CONSTANT_MSE_FLOOR = 1e-3  # dimensions the constant predictor already gets right are not scored


def chunk_skill(mse: torch.Tensor, constant: torch.Tensor) -> float:
    """1 - error / the constant predictor's, averaged over the dimensions it does not get right
    (1: perfect, 0: no better than the mean action, < 0: worse)."""
    scored = constant > CONSTANT_MSE_FLOOR
    return float((1 - mse[scored] / constant[scored]).mean())


def held_out_rows(bank: EpisodeBank, count: int, seed: int) -> torch.Tensor:
    """A fixed sample of `count` frame rows (all of them if fewer), the same at every validation."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(len(bank), generator=gen)[:count].sort().values


def chunk_error_sums(
    sampled: torch.Tensor, target: torch.Tensor, is_pad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalized chunks (B, n, A) and their padding (B, n) -> per dimension, summed over the real
    steps: the squared error (A,), the constant predictor's (the demos' mean action, 0 in these
    units) (A,), and the number of steps."""
    keep = (~is_pad[..., None]).float()
    return ((sampled - target) ** 2 * keep).sum((0, 1)), (target**2 * keep).sum((0, 1)), keep.sum()


@torch.no_grad()
def held_out_scores(policy: VipraPolicy, batch: dict) -> dict[str, float]:
    """On a preprocessed batch (normalized units) with fixed noise: the flow-matching loss, and the
    sampled chunk's error over its first n_action_steps against the constant predictor's (the demos'
    mean action, 0 in these units), per dimension and as `chunk_skill`."""
    cfg, gen = policy.config, torch.Generator().manual_seed(0)
    actions = batch[ACTION_KEY]
    noise = torch.randn(actions.shape, generator=gen).to(actions.device)
    state = torch.get_rng_state()
    torch.manual_seed(0)  # the loss's time and noise draws: the same every validation
    fm_loss = policy.forward(batch)[1]["fm_loss"]
    torch.set_rng_state(state)
    n = cfg.n_action_steps
    sampled = policy.predict_action_chunk(batch, noise=noise)[:, :n]
    error, constant, count = chunk_error_sums(sampled, actions[:, :n], batch["action_is_pad"][:, :n])
    mse, constant = error / count, constant / count
    scores = {"fm_loss": fm_loss, "chunk_skill": chunk_skill(mse, constant)}
    return scores | {
        f"chunk_error_ratio_{d}": float(mse[d] / constant[d])
        for d in range(len(mse))
        if constant[d] > CONSTANT_MSE_FLOOR
    }


@torch.no_grad()
def waypoint_errors_cm(
    policy: VipraPolicy, batch: dict, points: torch.Tensor, camera: PinholeCamera
) -> dict[str, float]:
    """Per event (and the hand now, with the hand anchor), the RMS x-y distance (cm) between where the hand
    was at it (points (B, M, 3) metres) and the waypoint map's peak seen on the table at that height
    through the camera, over the frames that have one."""
    predicted = policy._encode_with_waypoint(batch)[1][1].cpu().double().numpy()  # (B, M, 2) in [-1, 1]
    keep = ~batch[WAYPOINT_PAD_KEY].cpu().numpy()
    scores = {}
    for j, event in enumerate((*WAYPOINT_EVENTS, HAND_NOW)[: predicted.shape[1]]):
        if not keep[:, j].any():
            continue
        truth = points[keep[:, j], j].double().numpy()
        pixels = (predicted[keep[:, j], j] + 1) * camera.image_size / 2
        seen = camera.backproject(pixels, truth[:, 2])
        scores[f"waypoint_{event}_cm"] = 100 * float(((seen - truth)[:, :2] ** 2).sum(-1).mean() ** 0.5)
    return scores


def calibrated_camera(cfg: DictConfig) -> PinholeCamera:
    """The task's camera calibration (conf/task: `camera`), which the waypoint maps' labels need."""
    camera = cfg.task.get("camera")
    if not camera:
        raise ValueError(
            "model.policy.waypoint_weight > 0 projects the hand into the image: set task.camera "
            "(pos, target, fovy: the camera's calibration, as in conf/task/bridge.yaml)"
        )
    return PinholeCamera.from_config(camera, cfg.task.image_size)


def dataset_stats(bank: EpisodeBank) -> dict:
    """Mean and std of every loaded column over the demos' frames (LeRobot's stats layout)."""
    return {k: {"mean": v.mean(0), "std": v.std(0)} for k, v in bank.columns.items()}


def first_demos(bank: EpisodeBank, count: int | None) -> EpisodeBank:
    """The first `count` demo episodes (all with None): data.generate interleaves the tasks, so the first
    n hold n / tasks of each (the data-efficiency curve's smaller sets)."""
    if count is None:
        return bank
    if not 1 <= count <= len(bank.episodes):
        raise ValueError(f"train.policy.demos={count}: the dataset holds {len(bank.episodes)} demos")
    return bank.subset(bank.episodes[:count])


def reads_state_context(cfg: DictConfig) -> bool:
    return cfg.model.policy.get("context", "video") == "state"


def build_policy(cfg: DictConfig, bank: EpisodeBank) -> VipraPolicy:
    """The policy for this run: its features from the dataset, as lerobot-train takes them (the policy
    keeps the camera `task.image_key`, the state and the action; state_fm the object poses instead of
    the camera); the backbone's config and weights from the pretrained run in `train.policy.backbone`
    (VipraConfig.pretrained_backbone), or random (null)."""
    pcfg = OmegaConf.to_container(cfg.model.policy, resolve=True)
    features = dataset_to_policy_features(load_metadata(cfg.train.policy.dataset).features)
    backbone = cfg.train.policy.backbone
    if reads_state_context(cfg) and backbone:
        raise ValueError(
            f"the state context has no backbone: set train.policy.backbone=null (got {backbone})"
        )
    scratch = pcfg.pop("backbone_scratch")
    if not backbone:
        pcfg["backbone_lr_scale"] = 1.0  # Scratch-FM: the whole network learns at the full rate
    if pcfg.get("waypoint_weight", 0) > 0 and pcfg.pop("waypoint_on_table", True):
        camera = calibrated_camera(cfg)
        pcfg["camera_calibration"] = OmegaConf.to_container(cfg.task.camera, resolve=True)
        waypoints = Waypoints.of(bank, pcfg["binary_action_dims"][0], camera)
        pcfg["waypoint_heights"] = waypoints.mean_heights()
        if pcfg.get("hand_anchor"):  # the preprocessor's statistics of the hand's position
            stats = dataset_stats(bank)[STATE_KEY]
            pcfg["hand_position_stats"] = {
                "mean": stats["mean"][:3].tolist(),
                "std": stats["std"][:3].clamp_min(MIN_STD).tolist(),
            }
    pcfg.pop("waypoint_on_table", None)
    config = VipraConfig(
        **pcfg,
        input_features={k: f for k, f in features.items() if f.type is not FeatureType.ACTION},
        output_features={k: f for k, f in features.items() if f.type is FeatureType.ACTION},
        camera=None if reads_state_context(cfg) else cfg.task.image_key,
        backbone=scratch,  # replaced by the pretrained backbone's config, if any
        pretrained_backbone=str(backbone) if backbone else None,
        device=cfg.train.policy.device,
    )
    return VipraPolicy(config)


def init_from_policy(policy: VipraPolicy, path: str | Path) -> None:
    """Start from a trained policy's weights (`train.policy.init_policy`): a second finetuning stage, e.g.
    the shortcut mode trained onto a converged flow-matching decoder. The architecture must match."""
    weights = Path(path) / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(
            f"train.policy.init_policy={path}: no model.safetensors there (expected a pretrained_model "
            "folder written by policies.train_policy)"
        )
    VipraPolicy._load_as_safetensor(policy, str(weights), "cpu", strict=True)


def save_pretrained_atomic(policy: VipraPolicy, processors: tuple, out: Path) -> None:
    """`save_pretrained` and the processor pair beside it (policy_preprocessor.json + the statistics'
    safetensors, ...), as lerobot-train writes them, so LeRobot's tools (make_pre_post_processors,
    lerobot-eval) load the folder."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp)
    for processor in processors:
        processor.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


# ---------------------------------------------------------------------------------------------- video co-training
class VideoCotraining(nn.Module):
    """The policy's loss on the demos plus `weight` x the pretrained backbone's own loss (its run's
    train.backbone.loss) on frames of the actionless video: finetuning keeps the backbone predicting the
    video, whose scenes and looks the demos do not cover, instead of letting it drift to the demos alone."""

    def __init__(self, policy: VipraPolicy, video_loss: DictConfig, weight: float):
        super().__init__()
        self.policy, self.video, self.weight = policy, VideoObjective(policy.backbone, video_loss), weight

    def forward(self, batch: dict, frames, words, future, codes) -> tuple[torch.Tensor, dict]:
        loss, terms = self.policy(batch)
        video_loss, video_terms = self.video(frames, words, future, codes)
        return loss + self.weight * video_loss, terms | {
            f"video_{k}": float(v.detach()) for k, v in video_terms.items()
        }


def video_share(positions: torch.Tensor, size: int, fraction: float) -> torch.Tensor:
    """Which of a step's round(fraction x size) co-training video samples go with the demo rows at `positions`
    (this micro-batch's, of `size`): sample j goes with row floor(j / fraction), so micro-batches and
    processes share them as they share the rows, and a single batch takes samples 0 .. K-1."""
    samples = torch.arange(round(size * fraction))
    return samples[torch.isin((samples / fraction).floor().long(), positions)]


def pretraining_recipe(backbone: str | Path) -> DictConfig:
    """The train.backbone config the pretrained backbone in this run folder was trained with."""
    path = Path(backbone) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"train.policy.cotrain needs the backbone's pretraining recipe at {path} (written by "
            "world_model.backbone.train into its run folder): point train.policy.backbone at that run folder"
        )
    return OmegaConf.load(path).train.backbone


def load_cotraining_video(cfg: DictConfig, policy: VipraPolicy) -> tuple[EpisodeBank, DictConfig]:
    """The actionless video the backbone was pretrained on (all of it: co-training scores nothing on it) and
    that run's recipe; refuses a run with nothing to co-train or labels it cannot supply."""
    tcfg = cfg.train.policy
    if not tcfg.backbone:
        raise ValueError(
            "train.policy.cotrain.weight > 0 continues the pretrained backbone's video objective: set "
            "train.policy.backbone to a pretrained run (Scratch-FM has none)"
        )
    if policy.config.backbone_lr_scale == 0:
        raise ValueError(
            "train.policy.cotrain.weight > 0 trains the backbone: model.policy.backbone_lr_scale is 0"
        )
    recipe = pretraining_recipe(tcfg.backbone)
    if recipe.labels is not None and recipe.loss.action > 0:
        raise ValueError(
            f"the backbone in {tcfg.backbone} was pretrained on latent-action labels ({recipe.labels}); "
            "co-training supports frames-only pretraining (train.backbone.labels=null)"
        )
    dataset = tcfg.cotrain.get("dataset") or recipe.dataset
    bank, _ = load_labelled_video(dataset, None, cfg.task.image_key, recipe.embodiment)
    if bank.frames.shape[-1] != policy.backbone.cfg.image_size:
        raise ValueError(
            f"the co-training video {dataset} is {bank.frames.shape[-1]} pixels wide, the backbone takes "
            f"{policy.backbone.cfg.image_size}"
        )
    return bank, recipe


class PolicyTask(TrainTask):
    """The policy on LeRobot batches of the labelled demos: `policy.forward` is its loss."""

    progress_keys = ("fm_loss", "shortcut_loss", "waypoint_loss", "video_frame_mse")

    def __init__(self, cfg: DictConfig, device: torch.device):
        tcfg = self.tcfg = cfg.train.policy
        self.state_context = reads_state_context(cfg)
        columns = [STATE_KEY, ACTION_KEY] + ([ENV_STATE_KEY] if self.state_context else [])
        bank = EpisodeBank.load(
            tcfg.dataset, cfg.task.image_key, columns, expect_lossless=cfg.task.get("lossless_images", True)
        )
        bank = first_demos(bank, tcfg.get("demos"))
        # A share of the demos held out (whole episodes: unseen scenes) to score what the policy
        # generalizes, not what it memorized; 0 trains on every demo.
        self.bank, self.held_out = bank, None
        if tcfg.get("val_fraction", 0):
            train_eps, held_eps = split_episodes(len(bank.episodes), tcfg.val_fraction, tcfg.seed)
            self.bank = bank.subset([bank.episodes[i] for i in train_eps])
            self.held_out = bank.subset([bank.episodes[i] for i in held_eps])
        policy = self.model = self.objective = build_policy(cfg, self.bank).to(device)
        if tcfg.get("init_policy"):
            init_from_policy(policy, tcfg.init_policy)
        policy.train()
        # The policy learns in normalized units: batches pass through the preprocessor lerobot-train
        # would run, and the pair is saved beside the weights.
        self.processors = make_vipra_pre_post_processors(policy.config, dataset_stats(self.bank))
        self.waypoints = self.held_out_waypoints = self.camera = None
        if policy.config.waypoint_weight > 0:  # a gripper event needs a binary gripper dim (checked)
            self.camera = calibrated_camera(cfg)
            gripper = policy.config.binary_action_dims[0]
            hand = policy.config.hand_anchor
            self.waypoints = Waypoints.of(self.bank, gripper, self.camera, hand)
            if self.held_out is not None:
                self.held_out_waypoints = Waypoints.of(self.held_out, gripper, self.camera, hand)
        self.modules = {"policy": policy}
        self.grad_clip = policy.config.optimizer_grad_clip_norm
        self.device = device
        self.image_key = None if self.state_context else cfg.task.image_key
        self.looks = None  # photometric augmentation of the demo frames (train.policy.looks)
        looks = tcfg.get("looks") or {}
        if looks.get("prob", 0) > 0 and self.image_key is not None:
            if tcfg.get("feature_cache"):
                raise ValueError(
                    f"train.policy.looks.prob={looks.prob} changes the frames at every step, and "
                    "train.policy.feature_cache holds one set of features per frame: turn one of them off"
                )
            self.looks = LookAugment.fit(self.bank.frames, looks)
        self.features = None  # a frozen backbone's features per demo row (train.policy.feature_cache)
        if tcfg.get("feature_cache"):
            check_cacheable(policy, tcfg.shift)
            episodes = ",".join(map(str, self.bank.episodes))  # the training demos, in the bank's order
            describe = {
                "dataset": str(tcfg.dataset),
                "episodes": hashlib.sha256(episodes.encode()).hexdigest()[:16],
            }
            self.features = load_or_compute(
                tcfg.feature_cache, policy, len(self.bank), self.unshifted_batch, describe
            )
        self.video = self.video_shift = None  # actionless video the backbone keeps predicting (cotrain)
        cotrain = tcfg.get("cotrain") or {}
        if cotrain.get("weight", 0) > 0:
            if self.features is not None:
                raise ValueError(
                    "train.policy.cotrain trains the backbone; a feature_cache is for a frozen one"
                )
            self.video, recipe = load_cotraining_video(cfg, policy)
            self.video_shift, self.video_fraction = recipe.shift, cotrain.fraction
            self.objective = VideoCotraining(policy, recipe.loss, cotrain.weight)
        self.model_config = {
            "policy": OmegaConf.to_container(cfg.model.policy, resolve=True),
            "backbone": tcfg.backbone,
        } | ({"cotrain": OmegaConf.to_container(cotrain, resolve=True)} if self.video is not None else {})

    def param_groups(self) -> list:
        return self.model.get_optim_params()

    def make_optimizer(self, groups: list) -> torch.optim.Optimizer:
        return self.model.config.get_optimizer_preset().build(groups)  # as lerobot-train builds it

    def lr_factor(self, step: int, tcfg: DictConfig) -> float:
        preset = self.model.config.get_scheduler_preset()  # the schedule lerobot-train runs
        return warmup_cosine(step, self.total_steps(tcfg), preset.num_warmup_steps, preset.floor)

    def describe(self) -> str:
        tcfg = self.tcfg
        origin = f"from {tcfg.backbone}" if tcfg.backbone else "from scratch"
        if self.video is not None:
            origin += f", co-trained on {len(self.video)} video frames (weight {tcfg.cotrain.weight})"
        if tcfg.get("init_policy"):
            origin = f"from the policy {tcfg.init_policy}"
        held = f", {len(self.held_out.episodes)} held out" if self.held_out is not None else ""
        return (
            f"policy: {millions(self.model)} parameters, backbone {origin}; "
            f"{len(self.bank)} frames of {len(self.bank.episodes)} demos{held}"
        )

    def validate(self, step: int, model: VipraPolicy) -> dict[str, float]:
        if self.held_out is None:
            return {}
        rows = held_out_rows(self.held_out, self.tcfg.get("val_frames", 512), self.tcfg.seed)
        batch = self.preprocess(
            make_batch(
                self.held_out, rows, model.config.chunk_size, self.image_key, 0, None, self.held_out_waypoints
            )
        )
        scores = held_out_scores(model, batch)
        if self.held_out_waypoints is not None:
            scores |= waypoint_errors_cm(model, batch, self.held_out_waypoints.points[rows], self.camera)
        return scores

    def preprocess(self, batch: dict) -> dict:
        """To the device and through the preprocessor. The waypoint (image coordinates: a training target only the
        policy reads) goes around it, since LeRobot's processors keep only the keys they know."""
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        waypoint = {k: batch.pop(k) for k in (WAYPOINT_KEY, WAYPOINT_PAD_KEY) if k in batch}
        return self.processors[0](batch) | waypoint

    def check_micro_batch(self, rows: int) -> None:
        if self.video is not None:
            share = rows * self.video_fraction
            if share < 1 or abs(share - round(share)) > 1e-6:
                raise ValueError(
                    f"micro-batches of {rows} rows x train.policy.cotrain.fraction={self.video_fraction} must "
                    "make a whole number (>= 1) of video frames: change the fraction, batch_size or grad_accum"
                )
        fraction = self.model.config.shortcut_fraction
        if fraction > 0 and round(fraction * rows) == 0:
            raise ValueError(
                f"micro-batches of {rows} rows leave no row for the shortcut loss (shortcut_fraction="
                f"{fraction}, taken per micro-batch): raise batch_size or lower grad_accum"
            )

    def unshifted_batch(self, rows: torch.Tensor) -> dict:
        """The preprocessed batch of these training rows, frames unshifted (the feature cache's input)."""
        return self.preprocess(make_batch(self.bank, rows, self.model.config.chunk_size, self.image_key, 0))

    def draw(self, step: int, gen: torch.Generator, size: int):
        rows = torch.randint(len(self.bank), (size,), generator=gen)
        looks = self.looks.draw(size, gen) if self.looks is not None else None
        demos = rows, shift_offsets(size, self.tcfg.shift, gen), looks
        if self.video is None:
            return demos
        video_rows = torch.randint(len(self.video), (size,), generator=gen)
        return demos + (video_rows, shift_offsets(size, self.video_shift, gen))

    def micro_batch(self, draw, positions: torch.Tensor, step: int) -> tuple:
        rows, offsets, looks = draw[:3]
        horizon = self.model.config.chunk_size
        batch = make_batch(
            self.bank,
            rows[positions],
            horizon,
            self.image_key,
            self.tcfg.shift,
            offsets[:, positions],
            self.waypoints,
            (self.looks, looks[positions]) if looks is not None else None,
        )
        batch = self.preprocess(batch)
        if self.features is not None:  # the frozen backbone's features of these rows, computed once
            batch |= self.features.batch(rows[positions], self.device)
        if self.video is None:
            return (batch,)
        return (batch, *self.video_micro_batch(draw[3], draw[4], positions))

    def video_micro_batch(self, rows: torch.Tensor, offsets: torch.Tensor, positions: torch.Tensor) -> tuple:
        """Video frames for co-training: `cotrain.fraction` of a frame per demo frame of the micro-batch."""
        mine = video_share(positions, len(rows), self.video_fraction)
        backbone = self.model.backbone.cfg
        batch = make_video_batch(
            self.video, rows[mine], backbone.horizon, backbone.vocab_size, self.video_shift, offsets[:, mine]
        )
        return tuple(t.to(self.device) for t in batch)

    def summary(self, last_terms: dict, model: VipraPolicy) -> dict:
        if not last_terms:  # nothing left to train
            return {}
        final = {"final_fm_loss": last_terms["fm_loss"], "final_shortcut_loss": last_terms["shortcut_loss"]}
        return final | {f"held_out_{k}": v for k, v in self.validate(-1, model).items()}

    def export(self, out_dir: Path, model: VipraPolicy) -> None:
        save_pretrained_atomic(model, self.processors, out_dir / PRETRAINED_DIR)


def train(cfg: DictConfig) -> dict:
    """Finetune (or train from scratch, or resume) the policy of `cfg.model.policy` with `cfg.train.policy`."""
    return Trainer(cfg.train.policy, "policy", cfg).fit(lambda device: PolicyTask(cfg, device))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    print_run(train(cfg), "policy", Path(cfg.train.policy.out_dir) / PRETRAINED_DIR, "policies.train_policy")


if __name__ == "__main__":
    main()
