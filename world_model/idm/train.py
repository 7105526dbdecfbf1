"""Train the inverse dynamics model on the labelled demos the policy is finetuned on (the first
`train.idm.demos`), scored on demos it never saw.

    python -m world_model.idm.train train.policy.demos=25 train.idm.out_dir=outputs/idm     # ~2 min here
    python -m world_model.idm.label label.checkpoint=outputs/idm label.dataset=outputs/datasets/video

Every transition t -> t+k of a training demo is a sample: frames t and t+k (shifted together by up to
`shift` pixels) and the k actions in between. Held out: R^2 of each action dimension against the held-out
demos' mean, and of the translation (the first three, the LAM probe's target).
"""

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from data.chunks import EpisodeBank
from data.clips import random_shift, shift_offsets
from world_model.idm.model import IDMConfig, InverseDynamics
from world_model.training.checkpoint import CKPT_DIR
from world_model.training.trainer import Trainer, TrainTask, millions, print_run


def split_demos(episodes: list[int], demos: int | None, val_episodes: int) -> tuple[list[int], list[int]]:
    """(training, held out): the first `demos` episodes (all with None), and up to `val_episodes` of the
    last episodes outside them (none when the training demos are all there is)."""
    if demos is not None and not 1 <= demos <= len(episodes):
        raise ValueError(f"train.idm.demos={demos}: the dataset holds {len(episodes)} demos")
    train = episodes[:demos] if demos is not None else list(episodes)
    rest = episodes[len(train) :]
    return train, rest[len(rest) - min(val_episodes, len(rest)) :]


def transition_rows(bank: EpisodeBank, k: int) -> torch.Tensor:
    """Rows t of the bank whose frame t+k lies in the same episode."""
    return torch.nonzero(torch.arange(len(bank)) + k <= bank.episode_end).flatten()


def transition_batch(bank: EpisodeBank, rows: torch.Tensor, k: int, action_key: str):
    """Rows t -> frames t and t+k (B, 3, H, W) in [0, 1], and actions t .. t+k-1 (B, k, A)."""
    before, after = bank.frames[rows].float() / 255, bank.frames[rows + k].float() / 255
    actions = bank.columns[action_key][rows[:, None] + torch.arange(k)]
    return before, after, actions


@torch.no_grad()
def heldout_scores(model: InverseDynamics, bank: EpisodeBank, rows: torch.Tensor, action_key: str) -> dict:
    """R^2 of each action dimension on `rows` (against their own mean; None where it is constant there),
    their mean over the others, and the translation's (the first three)."""
    k = model.cfg.frame_stride
    predicted, actual = [], []
    for chunk in rows.split(512):
        before, after, actions = transition_batch(bank, chunk, k, action_key)
        predicted.append(model.predict(before, after).flatten(0, 1))
        actual.append(actions.flatten(0, 1))
    predicted, actual = torch.cat(predicted), torch.cat(actual)
    error = (predicted - actual).pow(2).mean(0)
    spread = (actual - actual.mean(0)).pow(2).mean(0)
    varies = spread > 1e-12
    r2 = 1 - error / spread.clamp_min(1e-12)
    return {
        "r2_translation": float(r2[:3].mean()),
        "r2_mean": float(r2[varies].mean()),
        "r2_per_dim": [round(float(v), 4) if ok else None for v, ok in zip(r2, varies, strict=True)],
    }


class Objective(torch.nn.Module):
    def __init__(self, model: InverseDynamics):
        super().__init__()
        self.model = model

    def forward(self, before, after, actions):
        loss = self.model.compute_loss(before, after, actions)
        return loss, {"mse": loss.detach()}


class IDMTask(TrainTask):
    """The inverse dynamics model on the transitions of the first n labelled demos."""

    progress_keys = ("mse",)

    def __init__(self, cfg: DictConfig, device: torch.device):
        tcfg = self.tcfg = cfg.train.idm
        self.action_key = cfg.task.action_key
        self.bank = EpisodeBank.load(tcfg.dataset, cfg.task.image_key, columns=[self.action_key])
        train_eps, val_eps = split_demos(self.bank.episodes, tcfg.demos, tcfg.val_episodes)
        arch = OmegaConf.to_container(cfg.model.idm, resolve=True)
        model_cfg = IDMConfig(**arch, action_dim=self.bank.columns[self.action_key].shape[-1])
        if model_cfg.image_size != self.bank.frames.shape[-1]:
            raise ValueError(
                f"{cfg.task.image_key!r} in {tcfg.dataset} is {self.bank.frames.shape[-1]} pixels wide, the "
                f"inverse dynamics model takes {model_cfg.image_size}"
            )
        k = model_cfg.frame_stride
        rows = transition_rows(self.bank, k)
        episode = self.bank.episode_index[rows]
        self.train_rows = rows[torch.isin(episode, torch.tensor(train_eps))]
        self.val_rows = rows[torch.isin(episode, torch.tensor(val_eps, dtype=torch.long))]
        if len(self.val_rows) > tcfg.val_frames:  # evenly spread over the held-out demos
            pick = torch.linspace(0, len(self.val_rows) - 1, tcfg.val_frames).round().long()
            self.val_rows = self.val_rows[pick]
        self.model = InverseDynamics(model_cfg).to(device)
        self.model.fit_statistics(self.bank.columns[self.action_key][self.train_rows])
        self.modules, self.objective = {"model": self.model}, Objective(self.model)
        self.lr, self.weight_decay, self.lr_floor = tcfg.lr, tcfg.weight_decay, tcfg.lr_min / tcfg.lr
        self.device, self.model_config = device, model_cfg.to_dict()
        self.meta = {"dataset": str(tcfg.dataset), "train_episodes": train_eps, "val_episodes": val_eps}

    def describe(self) -> str:
        return (
            f"inverse dynamics: {millions(self.model)} parameters; {len(self.train_rows)} transitions of "
            f"{len(self.meta['train_episodes'])} demos, {len(self.val_rows)} held out "
            f"({len(self.meta['val_episodes'])} demos)"
        )

    def draw(self, step: int, gen: torch.Generator, size: int):
        picks = self.train_rows[torch.randint(len(self.train_rows), (size,), generator=gen)]
        return picks, shift_offsets(size, self.tcfg.shift, gen)

    def micro_batch(self, draw, positions: torch.Tensor, step: int) -> tuple:
        rows, offsets = draw
        before, after, actions = transition_batch(
            self.bank, rows[positions], self.model.cfg.frame_stride, self.action_key
        )
        pair = random_shift(torch.stack([before, after], 1), self.tcfg.shift, offsets=offsets[:, positions])
        return pair[:, 0].to(self.device), pair[:, 1].to(self.device), actions.to(self.device)

    def validate(self, step: int, model: InverseDynamics) -> dict[str, float]:
        if not len(self.val_rows):
            return {}
        scores = heldout_scores(model, self.bank, self.val_rows, self.action_key)
        return {"val/r2_translation": scores["r2_translation"], "val/r2_mean": scores["r2_mean"]}

    def summary(self, last_terms: dict, model: InverseDynamics) -> dict:
        if not len(self.val_rows):
            return {"heldout": "none: every demo was trained on"}
        return heldout_scores(model, self.bank, self.val_rows, self.action_key) | {
            "heldout_demos": len(self.meta["val_episodes"]),
            "heldout_transitions": len(self.val_rows),
        }


def train(cfg: DictConfig) -> dict:
    """Train (or resume) the inverse dynamics model of `cfg.model.idm` with `cfg.train.idm`."""
    return Trainer(cfg.train.idm, "idm", cfg).fit(lambda device: IDMTask(cfg, device))


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    print_run(train(cfg), "checkpoint", Path(cfg.train.idm.out_dir) / CKPT_DIR, "world_model.idm.train")


if __name__ == "__main__":
    main()
