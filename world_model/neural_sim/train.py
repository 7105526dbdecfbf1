"""Train the neural simulator (world_model/neural_sim/model.py) on labelled robot rollouts.

    python -m data.generate_rollouts                    # demos, noisy-expert and failing episodes
    python -m world_model.neural_sim.train              # -> outputs/neural_sim
    python -m world_model.neural_sim.train train.neural_sim.steps=100 train.neural_sim.out_dir=/tmp/ns

Two phases, one checkpoint. First the state model and the judge (`state_steps`, cheap): from the real
state at t the state model predicts t+1 .. t+state_unroll autoregressively from the real actions, its
own predictions fed back with gradients through them, so it learns to stay on course over long
horizons; the judge learns success and grasp from the real states and from the predicted ones (detached)
with the real labels, so it reads imagined states as well as real ones. Then the video model and the
probe (`steps`): from the real frames t-1, t the video model draws t+1 .. t+unroll autoregressively
(a renderer draws each from the episode's first frame), conditioned on the real states and actions;
the probe learns the states from real and drawn frames.
Inputs are normalised with the dataset's statistics, kept in the checkpoint with the action range the
model saw (the env clips outside it). Checkpoints are safetensors, resumable (world_model/training/checkpoint.py).
"""

import math
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from data.chunks import EpisodeBank, split_episodes
from data.generate_rollouts import generated_with
from world_model.metrics import psnr
from world_model.neural_sim.dynamics import (
    ACTION,
    COLUMNS,
    ENV_STATE,
    GRASP,
    STATE,
    SUCCESS,
    WORLD,
    denormalize,
    judge_logits,
    normalize,
    on_table,
    state_step,
    statistics,
    world_columns,
    world_error,
)
from world_model.neural_sim.model import (
    NeuralRenderer,
    NeuralSimConfig,
    build_modules,
    video_condition,
)
from world_model.training.checkpoint import (
    CKPT_DIR,
)
from world_model.training.trainer import Trainer, TrainTask, print_run


# ---------------------------------------------------------------------------------------------- data
def load_rollouts(root: str | Path, image_key: str | None) -> EpisodeBank:
    return EpisodeBank.load(root, image_key, columns=COLUMNS)


def start_rows(bank: EpisodeBank, unroll: int) -> torch.Tensor:
    """Rows t whose episode continues for `unroll` more frames with both objects on the table."""
    rows = torch.arange(len(bank))
    rows = rows[bank.episode_end - rows >= unroll]
    off_table = (~on_table(world_columns(bank))).float()
    before = torch.cat([torch.zeros(1), off_table.cumsum(0)])  # (F + 1,) off-table frames before each row
    return rows[before[rows + unroll + 1] == before[rows]]


@dataclass
class Sequence:
    world: torch.Tensor  # (B, K + 1, 15) raw robot state and object poses, t .. t+K
    action: torch.Tensor  # (B, K, 7) normalised, t .. t+K-1
    last_action: torch.Tensor  # (B, 7) normalised, t-1 (a raw zero before the episode's first step)
    success: torch.Tensor  # (B, K + 1)
    grasp: torch.Tensor  # (B, K + 1)
    frames: torch.Tensor | None = None  # (B, K + 2, 3, H, W) frames t-1 .. t+K in [0, 1]
    first_frame: torch.Tensor | None = None  # (B, 3, H, W) the episode's first frame, what a renderer reads
    first_world: torch.Tensor | None = None  # (B, 15) raw, its state


def make_sequences(
    bank: EpisodeBank, rows: torch.Tensor, unroll: int, stats: dict, frames: bool = True
) -> Sequence:
    steps = rows[:, None] + torch.arange(unroll + 1)  # (B, K + 1): t .. t+K, inside the episode
    c = bank.columns
    first = (rows == bank.episode_start[rows])[:, None]
    seq = Sequence(
        world=torch.cat([c[STATE][steps], c[ENV_STATE][steps]], dim=-1),
        action=normalize(c[ACTION][steps[:, :-1]], stats[ACTION]),
        last_action=normalize(torch.where(first, 0.0, c[ACTION][rows - 1]), stats[ACTION]),
        success=c[SUCCESS][steps].squeeze(-1),
        grasp=c[GRASP][steps].squeeze(-1),
    )
    if frames:
        prev = torch.maximum(rows - 1, bank.episode_start[rows])[:, None]
        seq.frames = bank.frames[torch.cat([prev, steps], dim=1)].float() / 255
        first = bank.episode_start[rows]
        seq.first_frame = bank.frames[first].float() / 255
        seq.first_world = torch.cat([c[STATE][first], c[ENV_STATE][first]], dim=-1)
    return seq


# ---------------------------------------------------------------------------------------------- losses
def state_loss(states, judge, seq: Sequence, stats: dict, loss_cfg: DictConfig) -> tuple[torch.Tensor, dict]:
    """Autoregressive state error over the unroll; the judge on real and (detached) predicted states."""
    K = seq.action.shape[1]
    world, last_action, predicted = seq.world[:, 0], seq.last_action, []
    state_mse = attach_bce = 0.0
    for k in range(K):
        world, attach_logit = state_step(states, world, seq.action[:, k], last_action, stats)
        last_action = seq.action[:, k]
        state_mse = state_mse + world_error(world, seq.world[:, k + 1], stats).pow(2).mean() / K
        # The hand holds the object across the step when the fingers are on it after the step.
        attach_bce = attach_bce + F.binary_cross_entropy_with_logits(attach_logit, seq.grasp[:, k + 1]) / K
        predicted.append(world)
    real = seq.world[:, 1:].flatten(0, 1)  # (B K, 15)
    both = torch.cat([real, torch.stack(predicted, 1).flatten(0, 1).detach()])
    success_logit, grasp_logit = judge_logits(judge, both, stats)
    terms = {
        "state_mse": state_mse,
        "attach_bce": attach_bce,
        "judge_bce": F.binary_cross_entropy_with_logits(
            success_logit, seq.success[:, 1:].flatten().repeat(2)
        ),
        "grasp_bce": F.binary_cross_entropy_with_logits(grasp_logit, seq.grasp[:, 1:].flatten().repeat(2)),
    }
    total = loss_cfg.state * state_mse + loss_cfg.attach * attach_bce
    total = total + loss_cfg.judge * (terms["judge_bce"] + terms["grasp_bce"])
    return total, terms


def frame_loss(
    dynamics, probe, seq: Sequence, stats: dict, loss_cfg: DictConfig
) -> tuple[torch.Tensor, dict]:
    """Frame losses over the unroll (real states as conditions), probe on real and drawn frames."""
    world = normalize(seq.world, stats[WORLD])  # (B, K + 1, 15)
    drawn = draw_frames(dynamics, seq, stats)  # (B, K, 3, H, W)
    real = seq.frames[:, 2:]
    frame_l1 = (drawn - real).abs().mean()
    frame_mse = (drawn - real).pow(2).mean()
    both = torch.cat([real.flatten(0, 1), drawn.flatten(0, 1).detach()])
    probe_mse = F.mse_loss(probe(both), world[:, 1:].flatten(0, 1).repeat(2, 1))
    terms = {"frame_l1": frame_l1, "frame_mse": frame_mse, "probe_mse": probe_mse}
    return loss_cfg.frame * (frame_l1 + frame_mse) + loss_cfg.probe * probe_mse, terms


def draw_frames(dynamics, seq: Sequence, stats: dict) -> torch.Tensor:
    """Frames t+1 .. t+K (B, K, 3, H, W) conditioned on the real states: a warp model draws them
    autoregressively from the real frames t-1, t (gradients through its own frames), a renderer each
    from the episode's first frame."""
    world = normalize(seq.world, stats[WORLD])  # (B, K + 1, 15)
    K = seq.action.shape[1]
    if isinstance(dynamics, NeuralRenderer):
        first = normalize(seq.first_world, stats[WORLD])
        cond = [video_condition(first, seq.action[:, k], world[:, k + 1]) for k in range(K)]
        return torch.stack([dynamics(seq.first_frame, c) for c in cond], 1)
    prev, frame, drawn = seq.frames[:, 0], seq.frames[:, 1], []
    for k in range(K):
        cond = video_condition(world[:, k], seq.action[:, k], world[:, k + 1])
        prev, frame = frame, dynamics(prev, frame, cond)
        drawn.append(frame)
    return torch.stack(drawn, 1)


# ---------------------------------------------------------------------------------------------- eval
def val_rows(bank: EpisodeBank, unroll: int, num: int) -> torch.Tensor:
    rows = start_rows(bank, unroll)
    if not len(rows):
        raise ValueError(f"no held-out sequence of {unroll} steps with both objects on the table")
    return rows[torch.linspace(0, len(rows) - 1, min(num, len(rows))).long()]


@torch.no_grad()
def evaluate_states(states, judge, bank: EpisodeBank, stats: dict, unroll: int, num: int = 256) -> dict:
    """Held-out check: hand and object errors (cm) after `unroll` steps, the judge's accuracy on real states."""
    seq = make_sequences(bank, val_rows(bank, unroll, num), unroll, stats, frames=False)
    world = seq.world[:, 0]
    for k in range(unroll):
        last_action = seq.last_action if k == 0 else seq.action[:, k - 1]
        world, _ = state_step(states, world, seq.action[:, k], last_action, stats)
    real = seq.world[:, -1]
    success_logit, grasp_logit = judge_logits(judge, seq.world.flatten(0, 1), stats)
    return {
        "hand_cm": 100 * (world[:, :3] - real[:, :3]).norm(dim=-1).mean().item(),
        "object_cm": 100 * (world[:, 7:10] - real[:, 7:10]).norm(dim=-1).mean().item(),
        "judge_acc_real": ((success_logit > 0) == (seq.success.flatten() > 0.5)).float().mean().item(),
        "grasp_acc_real": ((grasp_logit > 0) == (seq.grasp.flatten() > 0.5)).float().mean().item(),
    }


@torch.no_grad()
def evaluate_frames(dynamics, probe, bank: EpisodeBank, stats: dict, unroll: int, num: int = 64) -> dict:
    """Held-out check: PSNR of the last drawn frame against copying frame t; the probe's hand error (cm)."""
    seq = make_sequences(bank, val_rows(bank, unroll, num), unroll, stats)
    frame = draw_frames(dynamics, seq, stats)[:, -1]
    read = denormalize(probe(frame), stats[WORLD])
    return {
        "psnr_last": psnr(frame, seq.frames[:, -1]).mean().item(),
        "psnr_copy": psnr(seq.frames[:, 1], seq.frames[:, -1]).mean().item(),
        "probe_hand_cm": 100 * (read[:, :3] - seq.world[:, -1, :3]).norm(dim=-1).mean().item(),
    }


# ---------------------------------------------------------------------------------------------- training
class Objective(torch.nn.Module):
    """The four modules, with the loss of a phase as the forward: the state model and the judge
    ("states"), or the video model and the probe ("frames")."""

    def __init__(self, modules: dict[str, torch.nn.Module], loss_cfg: DictConfig):
        super().__init__()
        self.parts, self.loss_cfg = torch.nn.ModuleDict(modules), loss_cfg

    def forward(self, seq: Sequence, phase: str, stats: dict):
        parts = self.parts
        if phase == "states":
            return state_loss(parts["states"], parts["judge"], seq, stats, self.loss_cfg)
        return frame_loss(parts["dynamics"], parts["probe"], seq, stats, self.loss_cfg)


class NeuralSimTask(TrainTask):
    """Two phases in one run and one checkpoint: `state_steps` of the state model and the judge, then
    `steps` of the video model and the probe, each with its own batch, unroll and schedule."""

    def __init__(self, cfg: DictConfig, device: torch.device):
        tcfg = self.tcfg = cfg.train.neural_sim
        bank = load_rollouts(tcfg.dataset, cfg.task.image_key)
        train_eps, val_eps = split_episodes(len(bank.episodes), tcfg.val_fraction, tcfg.seed)
        self.train_bank = bank.subset([bank.episodes[i] for i in train_eps])
        self.val_bank = bank.subset([bank.episodes[i] for i in val_eps])
        model_cfg = NeuralSimConfig(**OmegaConf.to_container(cfg.model.neural_sim, resolve=True))
        if model_cfg.image_size != bank.frames.shape[-1]:
            raise ValueError(
                f"{tcfg.dataset} has {bank.frames.shape[-1]}-pixel frames, the model takes {model_cfg.image_size}"
            )
        self.modules = {name: module.to(device) for name, module in build_modules(model_cfg).items()}
        # One optimizer for both phases: AdamW skips the parameters of the phase not training (no grads).
        self.objective = self.model = Objective(self.modules, tcfg.loss)
        self.lr, self.weight_decay, self.device = tcfg.lr, tcfg.weight_decay, device
        self.stats = statistics(self.train_bank)
        self.model_config = model_cfg.to_dict()
        self.meta = {
            "stats": self.stats,
            "state_steps": tcfg.state_steps,  # where the phases meet: fixed for a run
            "dataset": str(tcfg.dataset),
        }
        # What generated the rollouts, in the summary: a simulator of other rollouts is then told apart.
        self.rollouts_record = generated_with(tcfg.dataset)
        self.phases = {
            "states": (
                tcfg.state_steps,
                tcfg.state_batch,
                tcfg.state_unroll,
                start_rows(self.train_bank, tcfg.state_unroll),
            ),
            "frames": (tcfg.steps, tcfg.batch_size, tcfg.unroll, start_rows(self.train_bank, tcfg.unroll)),
        }

    def describe(self) -> str:
        size = {k: f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f}M" for k, m in self.modules.items()}
        return (
            f"neural simulator: {size} parameters; {len(self.train_bank.episodes)} training episodes, "
            f"{len(self.val_bank.episodes)} held out; {self.tcfg.state_steps} state steps, then "
            f"{self.tcfg.steps} frame steps"
        )

    def phase(self, step: int) -> tuple[str, int]:
        """The phase a step belongs to and the step within it."""
        if step < self.tcfg.state_steps:
            return "states", step
        return "frames", step - self.tcfg.state_steps

    def total_steps(self, tcfg: DictConfig) -> int:
        return tcfg.state_steps + tcfg.steps

    def milestones(self, tcfg: DictConfig) -> set[int]:
        return {tcfg.state_steps, self.total_steps(tcfg)} - {0}

    def lr_factor(self, step: int, tcfg: DictConfig) -> float:
        phase, phase_step = self.phase(step)
        return phase_schedule(phase_step, self.phases[phase][0], tcfg.lr_warmup)

    def on_resume(self, meta: dict) -> None:
        if meta["state_steps"] != self.tcfg.state_steps:
            raise ValueError(
                f"{self.tcfg.out_dir}/{CKPT_DIR} was trained with state_steps={meta['state_steps']}, not "
                f"{self.tcfg.state_steps}: the phases would meet elsewhere; use another "
                "train.neural_sim.out_dir or set train.neural_sim.resume=false"
            )
        self.stats = self.meta["stats"] = meta["stats"]  # the statistics the weights were trained with

    def batch_size(self, step: int) -> int:
        return self.phases[self.phase(step)[0]][1]

    def draw(self, step: int, gen: torch.Generator, size: int):
        rows = self.phases[self.phase(step)[0]][3]
        return rows[torch.randint(len(rows), (size,), generator=gen)]

    def micro_batch(self, draw, positions: torch.Tensor, step: int) -> tuple:
        phase = self.phase(step)[0]
        unroll = self.phases[phase][2]
        seq = make_sequences(self.train_bank, draw[positions], unroll, self.stats, frames=phase == "frames")
        seq = Sequence(*(None if t is None else t.to(self.device) for t in vars(seq).values()))
        return seq, phase, self.stats

    def validate(self, step: int, model: torch.nn.Module) -> dict[str, float]:
        return validate(self.modules, self.val_bank, self.stats, self.tcfg, self.phase(step)[0])

    def summary(self, last_terms: dict, model: torch.nn.Module) -> dict:
        both = [validate(self.modules, self.val_bank, self.stats, self.tcfg, p) for p in ("states", "frames")]
        return both[0] | both[1] | {"rollouts": self.rollouts_record}


def phase_schedule(step: int, steps: int, warmup: int) -> float:
    """The rate's factor at `step` of a phase of `steps`: linear warm-up times a cosine from 1 to a tenth
    over the whole phase. (Its own shape, kept from before the loop was shared: the common
    `warmup_cosine` would move this model's figures.)"""
    cosine = 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))
    return min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * cosine)


def train(cfg: DictConfig) -> dict:
    """Train (or resume) the neural simulator of `cfg.model.neural_sim` with `cfg.train.neural_sim`."""
    return Trainer(cfg.train.neural_sim, "neural_sim", cfg).fit(lambda device: NeuralSimTask(cfg, device))


def validate(modules: dict, val_bank: EpisodeBank, stats: dict, tcfg: DictConfig, phase: str) -> dict:
    if phase == "states":
        return evaluate_states(modules["states"], modules["judge"], val_bank, stats, tcfg.state_unroll)
    return evaluate_frames(modules["dynamics"], modules["probe"], val_bank, stats, tcfg.unroll)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    print_run(
        train(cfg),
        "checkpoint",
        Path(cfg.train.neural_sim.out_dir) / CKPT_DIR,
        "world_model.neural_sim.train",
    )


if __name__ == "__main__":
    main()
