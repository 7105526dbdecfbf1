"""Train the neural simulator (world_model/neural_sim.py) on labelled robot rollouts.

    python -m data.generate_rollouts                    # demos, noisy-expert and failing episodes
    python -m world_model.train_neural_sim              # -> outputs/neural_sim
    python -m world_model.train_neural_sim train.neural_sim.steps=100 train.neural_sim.out_dir=/tmp/ns

Two phases, one checkpoint. First the state model and the judge (`state_steps`, cheap): from the real
state at t the state model predicts t+1 .. t+state_unroll autoregressively from the real actions, its
own predictions fed back with gradients through them, so it learns to stay on course over long
horizons; the judge learns success and grasp from the real states and from the predicted ones (detached)
with the real labels, so it reads imagined states as well as real ones. Then the video model and the
probe (`steps`): from the real frames t-1, t the video model draws t+1 .. t+unroll autoregressively,
conditioned on the real states and actions; the probe learns the states from real and drawn frames.
Inputs are normalised with the dataset's statistics, kept in the checkpoint with the action range the
model saw (the env clips outside it). Checkpoints are safetensors, resumable (world_model/checkpoint.py).
"""

import json
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from data.chunks import EpisodeBank, split_episodes
from world_model.losses import psnr
from world_model.neural_sim import (
    OBJECT_YAW_MASK,
    STATE_DIM,
    NeuralSimConfig,
    StateDynamics,
    SuccessJudge,
    build_modules,
    geometry_features,
    video_condition,
    wrap_angle,
)
from world_model.training import Trainer, TrainTask
from world_model.training.checkpoint import (
    CKPT_DIR,
    load_trained,
)

STATE, ENV_STATE, ACTION = "observation.state", "observation.environment_state", "action"
SUCCESS, GRASP = "success", "grasped_now"
WORLD = "world"  # robot state and object poses side by side (B, 15)
COLUMNS = [STATE, ENV_STATE, ACTION, SUCCESS, GRASP]


# ---------------------------------------------------------------------------------------------- data
def load_rollouts(root: str | Path, image_key: str) -> EpisodeBank:
    return EpisodeBank.load(root, image_key, columns=COLUMNS)


def on_table(world: torch.Tensor) -> torch.Tensor:
    """(..., 15) raw world states -> (...) bool: both objects still on the table. Random actions knock one
    off now and then (0.7% of the frames); it then falls without end, so those frames are left out."""
    x, z = world[..., [7, 11]], world[..., [9, 13]]
    return ((z > -0.03) & (x > -0.3) & (x < 1.0)).all(dim=-1)


def statistics(bank: EpisodeBank) -> dict[str, dict[str, list[float]]]:
    """Mean / std of the world state (objects on the table) and the actions, and the actions' range."""
    world, action = world_columns(bank), bank.columns[ACTION]
    world = world[on_table(world)]
    stats = {
        key: {"mean": v.mean(0).tolist(), "std": v.std(0).clamp_min(1e-3).tolist()}
        for key, v in ((WORLD, world), (ACTION, action))
    }
    stats[ACTION] |= {"min": action.min(0).values.tolist(), "max": action.max(0).values.tolist()}
    return stats


def world_columns(bank: EpisodeBank) -> torch.Tensor:
    return torch.cat([bank.columns[STATE], bank.columns[ENV_STATE]], dim=-1)  # (F, 15)


def normalize(x: torch.Tensor, stat: dict) -> torch.Tensor:
    return (x - torch.tensor(stat["mean"], device=x.device)) / torch.tensor(stat["std"], device=x.device)


def denormalize(x: torch.Tensor, stat: dict) -> torch.Tensor:
    return x * torch.tensor(stat["std"], device=x.device) + torch.tensor(stat["mean"], device=x.device)


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
    return seq


# ---------------------------------------------------------------------------------------------- model steps
def state_inputs(world: torch.Tensor, stats: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw world states (B, 15) -> what the state model and the judge read: the normalised state with the
    object yaws zeroed (they enter as angles through the geometry, their raw values jump at +-pi), and
    the geometry features (B, GEO_DIM)."""
    x = normalize(world, stats[WORLD])
    return torch.where(OBJECT_YAW_MASK.to(world.device), 0.0, x), geometry_features(world)


def state_step(
    states: StateDynamics, world: torch.Tensor, action: torch.Tensor, last_action: torch.Tensor, stats: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw world state (B, 15), normalised actions at t and t-1 (B, 7) -> the next raw world state and the
    attachment logit (B,). The action before matters: the arm lags its targets. A held source object
    turns with the hand about the hand's axis and moves with it; everything else moves freely."""
    std = torch.tensor(stats[WORLD]["std"], device=world.device)
    x, geo = state_inputs(world, stats)
    robot_change, attach_logit, free_change = states(x, torch.cat([action, last_action], dim=-1), geo)
    robot_change = robot_change * std[:STATE_DIM]  # (B, 7) metres and radians
    carried = carried_change(world, robot_change)  # (B, 8)
    object_change = torch.sigmoid(attach_logit) * carried + free_change * std[STATE_DIM:]
    robot = world[:, :STATE_DIM] + robot_change
    robot = torch.cat([robot[:, :-1], robot[:, -1:].clamp(0, 1)], dim=1)  # the gripper closes within [0, 1]
    objects = world[:, STATE_DIM:] + object_change
    objects = torch.where(OBJECT_YAW_MASK[STATE_DIM:].to(world.device), wrap_angle(objects), objects)
    return torch.cat([robot, objects], dim=1), attach_logit[:, 0]


def carried_change(world: torch.Tensor, robot_change: torch.Tensor) -> torch.Tensor:
    """How the source object's pose (B, 8 with the target's zeros) changes if the hand holds it while the
    hand moves by `robot_change` (B, 7, raw): its offset from the hand turns by the hand's yaw change."""
    offset = world[:, 7:9] - world[:, 0:2]  # (B, 2) object from hand, in the table plane
    turn = robot_change[:, 5]
    cos, sin = turn.cos(), turn.sin()
    turned = torch.stack(
        [cos * offset[:, 0] - sin * offset[:, 1], sin * offset[:, 0] + cos * offset[:, 1]], dim=1
    )
    xy = robot_change[:, 0:2] + turned - offset
    return torch.cat(
        [xy, robot_change[:, 2:3], robot_change[:, 5:6], torch.zeros_like(world[:, 11:15])], dim=1
    )


def world_error(predicted: torch.Tensor, real: torch.Tensor, stats: dict) -> torch.Tensor:
    """Normalised difference of raw world states (..., 15), object yaws the short way round."""
    diff = predicted - real
    diff = torch.where(OBJECT_YAW_MASK.to(diff.device), wrap_angle(diff), diff)
    return diff / torch.tensor(stats[WORLD]["std"], device=diff.device)


def judge_logits(judge: SuccessJudge, world: torch.Tensor, stats: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return judge(*state_inputs(world, stats))


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
    """Autoregressive frame losses over the unroll (real states as conditions), probe on real and drawn frames."""
    K = seq.action.shape[1]
    world = normalize(seq.world, stats[WORLD])  # (B, K + 1, 15)
    prev, frame = seq.frames[:, 0], seq.frames[:, 1]
    frame_l1 = frame_mse = 0.0
    drawn = []
    for k in range(K):
        frame_next = dynamics(prev, frame, video_condition(world[:, k], seq.action[:, k], world[:, k + 1]))
        real = seq.frames[:, k + 2]
        frame_l1 = frame_l1 + (frame_next - real).abs().mean() / K
        frame_mse = frame_mse + (frame_next - real).pow(2).mean() / K
        drawn.append(frame_next)
        prev, frame = frame, frame_next
    both = torch.cat([seq.frames[:, 2:].flatten(0, 1), torch.stack(drawn, 1).flatten(0, 1).detach()])
    probe_mse = F.mse_loss(probe(both), world[:, 1:].flatten(0, 1).repeat(2, 1))
    terms = {"frame_l1": frame_l1, "frame_mse": frame_mse, "probe_mse": probe_mse}
    return loss_cfg.frame * (frame_l1 + frame_mse) + loss_cfg.probe * probe_mse, terms


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
    world = normalize(seq.world, stats[WORLD])
    prev, frame = seq.frames[:, 0], seq.frames[:, 1]
    for k in range(unroll):
        prev, frame = (
            frame,
            dynamics(prev, frame, video_condition(world[:, k], seq.action[:, k], world[:, k + 1])),
        )
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

    def validate(self, step: int) -> dict[str, float]:
        return validate(self.modules, self.val_bank, self.stats, self.tcfg, self.phase(step)[0])

    def summary(self, last_terms: dict) -> dict:
        both = [validate(self.modules, self.val_bank, self.stats, self.tcfg, p) for p in ("states", "frames")]
        return both[0] | both[1]


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


# ---------------------------------------------------------------------------------------------- inference
class NeuralSim:
    """A trained neural simulator for inference: raw (unnormalised) states and actions in and out."""

    def __init__(self, modules: dict, stats: dict):
        self.states, self.judge = modules["states"].eval(), modules["judge"].eval()
        self.dynamics, self.probe = modules["dynamics"].eval(), modules["probe"].eval()
        self.stats = stats
        self.action_low = torch.tensor(stats[ACTION]["min"])
        self.action_high = torch.tensor(stats[ACTION]["max"])
        self._warned = False

    def clip_action(self, action: torch.Tensor) -> torch.Tensor:
        """Actions outside the range seen in training are clipped to it, with one warning per simulator."""
        clipped = torch.maximum(torch.minimum(action, self.action_high), self.action_low)
        if not self._warned and not torch.equal(clipped, action):
            warnings.warn(
                f"actions outside the neural simulator's training range [{self.action_low.tolist()}, "
                f"{self.action_high.tolist()}] are clipped to it",
                stacklevel=2,
            )
            self._warned = True
        return clipped

    @torch.no_grad()
    def step(self, prev, frame, world, action, last_action) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B, 3, H, W) in [0, 1], raw world state (B, 15), raw actions at t and t-1 (B, 7) -> next
        frame, next world. The action at t-1 is taken as given: pass it as clipped at its own step, and
        zeros before the first step (as in training)."""
        action = normalize(self.clip_action(action), self.stats[ACTION])
        last_action = normalize(last_action, self.stats[ACTION])
        next_world, _ = state_step(self.states, world, action, last_action, self.stats)
        norm = self.stats[WORLD]
        cond = video_condition(normalize(world, norm), action, normalize(next_world, norm))
        return self.dynamics(prev, frame, cond), next_world

    @torch.no_grad()
    def judge_state(self, world) -> dict[str, torch.Tensor]:
        """Probabilities (B,) of success and of fingers on the object in raw world states (B, 15)."""
        success_logit, grasp_logit = judge_logits(self.judge, world, self.stats)
        return {"success": torch.sigmoid(success_logit), "grasp": torch.sigmoid(grasp_logit)}

    @torch.no_grad()
    def read(self, frame) -> dict[str, torch.Tensor]:
        """What the probe sees in frames (B, 3, H, W): raw robot state (B, 7) and object poses (B, 8)."""
        world = denormalize(self.probe(frame), self.stats[WORLD])
        return {"state": world[:, :STATE_DIM], "env_state": world[:, STATE_DIM:]}


def load_neural_sim(path: str | Path) -> NeuralSim:
    modules, meta = load_trained(
        path, "neural simulator", lambda config: build_modules(NeuralSimConfig(**config))
    )
    return NeuralSim(modules, meta["stats"])


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    summary = train(cfg)
    print(json.dumps(summary, indent=1))
    print(f"checkpoint: {Path(cfg.train.neural_sim.out_dir) / CKPT_DIR}")
    print("command: python -m world_model.train_neural_sim " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
