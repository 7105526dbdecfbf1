"""Pretrain the video-prediction backbone on actionless video labelled by the frozen latent action model.

    python -m world_model.lam.label label.dataset=outputs/datasets/video     # the targets, once
    python -m world_model.backbone.train                                      # CPU profile -> outputs/backbone
    python -m world_model.backbone.train train.backbone.embodiment=robot train.backbone.out_dir=outputs/bb_robot
    python -m world_model.backbone.train train.backbone.loss.frame=0          # ablation: no future frame
    python -m world_model.backbone.train train.backbone.labels=null train.backbone.loss.action=0 \
        train.backbone.loss.keypoints=10 model.backbone.stem=conv model.backbone.keypoints=32   # frames alone

Each sample is a frame t of the video with frame t-1, its episode's instruction, frame t+H and the H
latent-action codes from t (-1 past the episode's end, ignored by the loss), or a continuous LAM's H
latents (NaN past the end). Frames are decoded once into memory and shifted by a few pixels per sample
(the same shift for all of a sample's frames). Held-out episodes measure what the backbone predicts
against trivial answers: the frame MSE against copying frame t, the code accuracy against always naming
the most common code (continuous latents: R^2 against their mean).
"""

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from data.chunks import EpisodeBank, split_episodes
from data.clips import random_shift, shift_offsets
from world_model.backbone.model import BackboneConfig, VideoBackbone, backbone_loss, change_target, tokenize
from world_model.layers import heatmap_cross_entropy
from world_model.training.checkpoint import CKPT_DIR
from world_model.training.trainer import Trainer, TrainTask, millions, print_run

EMBODIMENTS = {"robot": 0, "hand": 1}


# ---------------------------------------------------------------------------------------------- data
def load_labelled_video(
    dataset: str | Path,
    labels: str | Path | None,
    image_key: str,
    embodiment: str | None,
    tokens_per_step: int = 4,
    num_codes: int = 8,
) -> tuple[EpisodeBank, dict]:
    """The video dataset in memory with its latent-action codes as the `codes` column (F, N); with no
    `labels`, codes of -1 (no latent action anywhere: pretraining on the frames alone). A continuous
    LAM's labels become the `latents` column (F, N, D) instead, each dimension standardized over the
    labelled transitions (NaN where there is none). Returns the bank and the labels' shape as
    BackboneConfig names it (num_codes, tokens_per_step, latent_dim: 0 for codes); the given one
    without labels."""
    bank = EpisodeBank.load(dataset, image_key, columns=["embodiment"] if embodiment else [])
    shape = {"num_codes": num_codes, "tokens_per_step": tokens_per_step, "latent_dim": 0}
    if labels is None:
        bank.columns["codes"] = torch.full((len(bank), tokens_per_step), -1, dtype=torch.long)
    else:
        labels = Path(labels)
        if not labels.is_file():
            raise FileNotFoundError(
                f"no latent-action labels at {labels}; write them with "
                f"`python -m world_model.lam.label label.dataset={dataset} label.out={labels}`"
            )
        label = load_file(labels)
        if not torch.equal(label["episode_index"], bank.episode_index):
            raise ValueError(f"labels {labels} do not match the frames of {dataset} (was it regenerated?)")
        if "latents" in label:  # a continuous latent action model's
            bank.columns["latents"] = standardized(label["latents"])
            shape["tokens_per_step"], shape["latent_dim"] = label["latents"].shape[1:]
        else:
            bank.columns["codes"] = label["codes"]
            shape["num_codes"], shape["tokens_per_step"] = len(label["codebook"]), label["codes"].shape[1]
    if embodiment is not None:
        if embodiment not in EMBODIMENTS:
            raise ValueError(f"embodiment must be one of {list(EMBODIMENTS)} or null, got {embodiment!r}")
        keep = bank.columns["embodiment"].flatten() == EMBODIMENTS[embodiment]
        bank = bank.subset(torch.unique(bank.episode_index[keep]).tolist())
    return bank, {k: int(v) for k, v in shape.items()}


def standardized(latents: torch.Tensor) -> torch.Tensor:
    """(F, N, D) latents, NaN rows unlabelled -> each of the N x D dimensions at zero mean and unit
    variance over the labelled rows: every dimension weighs alike in the MSE, whatever the LAM's scale."""
    mean, std = label_statistics(latents)
    return (latents - mean) / std


def label_statistics(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, N, D) latents, NaN rows unlabelled -> the mean and std (N, D) that `standardized` divides out
    (a backbone's predictions times std plus mean are in the labels' units)."""
    labelled = latents[~latents[:, 0, 0].isnan()]
    if not len(labelled):
        raise ValueError("the continuous latent-action labels have no labelled transition")
    return labelled.mean(0), labelled.std(0).clamp_min(1e-6)


def make_batch(
    bank: EpisodeBank,
    rows: torch.Tensor,
    horizon: int,
    vocab: int,
    shift: int,
    offsets: torch.Tensor | None = None,
):
    """Rows of frames t -> (frames (B, 2, 3, H, W), words, future (B, 3, H, W), latent actions): codes
    (B, H, N), -1 past the episode's end, or continuous latents (B, H, N, D), NaN past it. `offsets`
    (2, B) are the random shifts (`data.clips.shift_offsets`)."""
    w = bank.window(rows, horizon)
    frames = torch.cat([bank.frames[w.context], bank.frames[w.future][:, None]], dim=1).float() / 255
    frames = random_shift(frames, shift, offsets=offsets)
    if "latents" in bank.columns:
        targets = bank.columns["latents"][w.chunk].masked_fill(w.chunk_is_pad[..., None, None], float("nan"))
    else:
        targets = bank.columns["codes"][w.chunk].masked_fill(w.chunk_is_pad[..., None], -1)
    words = tokenize([bank.tasks[i] for i in rows.tolist()], vocab)
    return frames[:, :2], words, frames[:, 2], targets


# ---------------------------------------------------------------------------------------------- eval
@torch.no_grad()
def evaluate(
    model: VideoBackbone,
    bank: EpisodeBank,
    majority_code: int | None,
    change_prior: torch.Tensor | None = None,
    num: int = 256,
) -> dict:
    """Held-out scores against trivial answers: codes against the training video's most common code
    (`majority_code`), continuous latents against the video's mean latent (zero, standardized);
    `change_prior` (g * g,) is the training frames' mean change map (`mean_change_map`), the answer a
    change map that ignores the frame would give."""
    model.eval()
    cfg = model.cfg
    rows = torch.linspace(0, len(bank) - 1, min(num, len(bank))).round().long()
    device = next(model.parameters()).device
    batch = make_batch(bank, rows, cfg.horizon, cfg.vocab_size, shift=0)
    frames, words, future, targets = (t.to(device) for t in batch)
    out = model(frames, words)
    scores = {
        "frame_mse": torch.mean((out.frame.clamp(0, 1) - future) ** 2).item(),
        "copy_mse": torch.mean((frames[:, 1] - future) ** 2).item(),
    } | latent_action_scores(out, targets, majority_code)
    if out.keypoints is not None:  # frame t drawn back from the keypoints, against its mean colour
        drawn = model.keypoint_decoder(out.keypoints, out.descriptors).clamp(0, 1)
        scores["keypoint_mse"] = torch.mean((drawn - frames[:, 1]) ** 2).item()
        scores["mean_frame_mse"] = torch.mean((frames[:, 1].mean(0) - frames[:, 1]) ** 2).item()
    if model.cfg.change_map:  # where frame t+H differs, against the training frames' mean change map
        target, moved = change_target(frames[:, 1], future, out.fmap.shape[-1])
        logits = model.change_logits(out, words)[moved]
        scores["change_ce"] = heatmap_cross_entropy(logits, target[moved]).item()
        # the targets' own entropy: the lowest cross-entropy any map can reach
        scores["change_ce_floor"] = (
            -(target[moved] * target[moved].clamp_min(1e-12).log()).sum(-1).mean().item()
        )
        if change_prior is not None:
            prior = change_prior.to(target).clamp_min(1e-12).log().expand_as(target[moved])
            scores["change_ce_prior"] = heatmap_cross_entropy(prior.view_as(logits), target[moved]).item()
    if model.cfg.keypoint_forecast:  # frame t+H's keypoints forecast, against "they stay where they are"
        actual = model.keypoints_of(future)
        scores["forecast_mse"] = torch.mean((model.forecast_keypoints(out, words) - actual) ** 2).item()
        scores["static_forecast_mse"] = torch.mean((model.keypoints_of(frames[:, 1]) - actual) ** 2).item()
    model.train()
    return scores


def latent_action_scores(out, targets: torch.Tensor, majority_code: int | None) -> dict[str, float]:
    """Codes: top-1 accuracy and the majority code's; continuous latents: MSE and R^2 against predicting
    their mean. Nothing where no transition is labelled (video without latent actions)."""
    if out.latents is not None:
        valid = ~targets[..., 0, 0].isnan()
        if not valid.any():
            return {}
        mse = (out.latents[valid] - targets[valid]).pow(2).mean().item()
        constant = targets[valid].pow(2).mean().item()  # standardized over the training video: mean 0
        return {"action_mse": mse, "constant_mse": constant, "action_r2": 1 - mse / constant}
    valid = targets >= 0
    if not valid.any():
        return {}
    return {
        "action_acc": (out.logits.argmax(-1)[valid] == targets[valid]).float().mean().item(),
        "majority_acc": (targets[valid] == majority_code).float().mean().item(),
    }


def mean_change_map(
    bank: EpisodeBank, horizon: int, size: int, num: int = 2048, seed: int = 0
) -> torch.Tensor:
    """(size * size,) the mean of `change_target` over a fixed sample of the bank's frames: where changes
    usually happen, whatever the frame shows."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(len(bank), (min(num, len(bank)),), generator=gen)
    w = bank.window(rows, horizon)
    target, moved = change_target(bank.frames[rows].float() / 255, bank.frames[w.future].float() / 255, size)
    return target[moved].mean(0)


# ---------------------------------------------------------------------------------------------- training
class Objective(torch.nn.Module):
    """The backbone with its loss as the forward, so that DDP wraps the whole step."""

    def __init__(self, model: VideoBackbone, loss_cfg: DictConfig):
        super().__init__()
        self.model, self.loss_cfg = model, loss_cfg

    def forward(self, frames, words, future, codes):
        out, weights = self.model(frames, words), self.loss_cfg
        drawn = forecast = change = None
        if weights.get("change_map", 0) > 0:
            change = self.model.change_logits(out, words)
        if weights.get("keypoints", 0) > 0:
            drawn = self.model.keypoint_decoder(out.keypoints, out.descriptors)
        if weights.get("keypoint_forecast", 0) > 0:
            with torch.no_grad():
                actual = self.model.keypoints_of(future)
            forecast = (self.model.forecast_keypoints(out, words), actual)
        return backbone_loss(
            out,
            future,
            codes,
            weights.frame,
            weights.action,
            drawn,
            frames[:, 1],
            weights.get("keypoints", 0),
            weights.get("keypoint_detail", 0),
            forecast,
            weights.get("keypoint_forecast", 0),
            change,
            weights.get("change_map", 0),
        )


class BackboneTask(TrainTask):
    """The video-prediction backbone on actionless video labelled with latent actions (codes or latents)."""

    progress_keys = ("frame_mse", "action_acc", "action_mse", "keypoint_mse", "forecast_mse", "change_ce")

    def __init__(self, cfg: DictConfig, device: torch.device):
        tcfg = self.tcfg = cfg.train.backbone
        arch = OmegaConf.to_container(cfg.model.backbone, resolve=True)
        if tcfg.labels is None and tcfg.loss.action > 0:
            raise ValueError(
                "train.backbone.labels is null (no latent actions) but train.backbone.loss.action is "
                f"{tcfg.loss.action}: set the action loss to 0 or point labels at the latent-action labels"
            )
        if tcfg.loss.get("keypoint_forecast", 0) > 0 and not arch.get("keypoint_forecast"):
            raise ValueError(
                "train.backbone.loss.keypoint_forecast > 0 needs the forecaster: set "
                "model.backbone.keypoint_forecast=true (with keypoints > 0)"
            )
        if tcfg.loss.get("change_map", 0) > 0 and not arch.get("change_map"):
            raise ValueError(
                "train.backbone.loss.change_map > 0 needs the change map's head: set model.backbone.change_map=true "
                "(with model.backbone.stem=conv)"
            )
        if tcfg.loss.get("keypoints", 0) > 0 and not arch.get("keypoints"):
            raise ValueError(
                "train.backbone.loss.keypoints > 0 draws the frame back from the stem's keypoints: set "
                "model.backbone.stem=conv and model.backbone.keypoints > 0"
            )
        defaults = BackboneConfig()
        bank, label_shape = load_labelled_video(
            tcfg.dataset,
            tcfg.labels,
            cfg.task.image_key,
            tcfg.embodiment,
            arch.pop("tokens_per_step", defaults.tokens_per_step),
            arch.pop("num_codes", defaults.num_codes),
        )
        arch.pop("latent_dim", None)  # the labels say
        model_cfg = BackboneConfig(**arch, **label_shape)
        if model_cfg.image_size != bank.frames.shape[-1]:
            raise ValueError(
                f"{cfg.task.image_key!r} in {tcfg.dataset} is {bank.frames.shape[-1]} pixels wide, the backbone "
                f"takes {model_cfg.image_size}"
            )
        self.model = VideoBackbone(model_cfg).to(device)
        self.modules, self.objective = {"model": self.model}, Objective(self.model, tcfg.loss)
        self.lr, self.weight_decay, self.lr_floor = tcfg.lr, tcfg.weight_decay, tcfg.lr_min / tcfg.lr
        self.device, self.cfg = device, model_cfg
        train_eps, val_eps = split_episodes(len(bank.episodes), tcfg.val_fraction, tcfg.seed)
        self.train_bank = bank.subset([bank.episodes[i] for i in train_eps])
        self.val_bank = bank.subset([bank.episodes[i] for i in val_eps])
        self.majority = None  # the most common code, the trivial answer the held-out codes are scored against
        if "codes" in self.train_bank.columns:
            labelled = self.train_bank.columns["codes"][self.train_bank.columns["codes"] >= 0]
            self.majority = int(torch.bincount(labelled, minlength=model_cfg.num_codes).argmax())
        self.change_prior = None
        if model_cfg.change_map:  # the stem's map is image / stem_stride wide
            size = model_cfg.image_size // model_cfg.stem_stride
            self.change_prior = mean_change_map(self.train_bank, model_cfg.horizon, size, seed=tcfg.seed)
        self.model_config = model_cfg.to_dict()
        self.meta = {"dataset": str(tcfg.dataset), "embodiment": tcfg.embodiment}

    def describe(self) -> str:
        return (
            f"backbone: {millions(self.model)} parameters; "
            f"{len(self.train_bank)} training frames ({len(self.train_bank.episodes)} episodes), "
            f"{len(self.val_bank)} held out"
        )

    def draw(self, step: int, gen: torch.Generator, size: int):
        rows = torch.randint(len(self.train_bank), (size,), generator=gen)
        return rows, shift_offsets(size, self.tcfg.shift, gen)

    def micro_batch(self, draw, positions: torch.Tensor, step: int) -> tuple:
        rows, offsets = draw
        cfg = self.cfg
        batch = make_batch(
            self.train_bank,
            rows[positions],
            cfg.horizon,
            cfg.vocab_size,
            self.tcfg.shift,
            offsets[:, positions],
        )
        return tuple(t.to(self.device) for t in batch)

    def validate(self, step: int, model: VideoBackbone) -> dict[str, float]:
        return evaluate(model, self.val_bank, self.majority, self.change_prior)

    def summary(self, last_terms: dict, model: VideoBackbone) -> dict:
        return evaluate(model, self.val_bank, self.majority, self.change_prior)


def train(cfg: DictConfig) -> dict:
    """Train (or resume) the backbone of `cfg.model.backbone` with `cfg.train.backbone`; returns a summary."""
    return Trainer(cfg.train.backbone, "backbone", cfg).fit(lambda device: BackboneTask(cfg, device))


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    print_run(
        train(cfg), "checkpoint", Path(cfg.train.backbone.out_dir) / CKPT_DIR, "world_model.backbone.train"
    )


if __name__ == "__main__":
    main()
