"""Train the neural simulator (world_model/neural_sim.py) on labelled robot rollouts.

    python -m data.generate_rollouts                    # demos, noisy-expert and failing episodes
    python -m world_model.train_neural_sim              # -> outputs/neural_sim
    python -m world_model.train_neural_sim train.neural_sim.steps=100 train.neural_sim.out_dir=/tmp/ns

Each sample is a frame t and the next `unroll` steps of its episode: the dynamics model predicts
t+1 .. t+unroll autoregressively from the real frames t-1, t and the real actions (its own predictions
fed back, gradients through them), so it learns to recover from its own errors over short horizons.
The frame probe (states, object poses, success and grasp judge) learns from the real frames and from
the predicted ones (detached) with the real labels, so it reads imagined frames as well as real ones.
Inputs are normalised with the dataset's statistics, kept in the checkpoint with the action range
the model saw (the env clips outside it). Checkpoints are safetensors, resumable (world_model/checkpoint.py).
"""

import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from data.chunks import EpisodeBank
from world_model.checkpoint import (
    CKPT_DIR,
    has_checkpoint,
    load_checkpoint,
    restore_interrupted_swap,
    save_checkpoint,
)
from world_model.losses import psnr
from world_model.neural_sim import FrameProbe, NeuralDynamics, NeuralSimConfig, probe_loss
from world_model.train_lam import split_episodes

STATE, ENV_STATE, ACTION = "observation.state", "observation.environment_state", "action"
SUCCESS, GRASP = "success", "grasped_now"
COLUMNS = [STATE, ENV_STATE, ACTION, SUCCESS, GRASP]


# ---------------------------------------------------------------------------------------------- data
def load_rollouts(root: str | Path, image_key: str) -> EpisodeBank:
    return EpisodeBank.load(root, image_key, columns=COLUMNS)


def statistics(bank: EpisodeBank) -> dict[str, dict[str, list[float]]]:
    """Mean / std of the vector columns, and the range of the actions the model will have seen."""
    stats = {}
    for key in (STATE, ENV_STATE, ACTION):
        v = bank.columns[key]
        stats[key] = {"mean": v.mean(0).tolist(), "std": v.std(0).clamp_min(1e-3).tolist()}
    stats[ACTION] |= {
        "min": bank.columns[ACTION].min(0).values.tolist(),
        "max": bank.columns[ACTION].max(0).values.tolist(),
    }
    return stats


def normalize(x: torch.Tensor, stat: dict) -> torch.Tensor:
    return (x - torch.tensor(stat["mean"], device=x.device)) / torch.tensor(stat["std"], device=x.device)


def denormalize(x: torch.Tensor, stat: dict) -> torch.Tensor:
    return x * torch.tensor(stat["std"], device=x.device) + torch.tensor(stat["mean"], device=x.device)


def start_rows(bank: EpisodeBank, unroll: int) -> torch.Tensor:
    """Rows t whose episode continues for `unroll` more frames."""
    rows = torch.arange(len(bank))
    return rows[bank.episode_end - rows >= unroll]


@dataclass
class Sequence:
    frames: torch.Tensor  # (B, K + 2, 3, H, W) frames t-1 .. t+K in [0, 1]
    state: torch.Tensor  # (B, K + 1, 7) normalised, t .. t+K
    env_state: torch.Tensor  # (B, K + 1, 8) normalised
    action: torch.Tensor  # (B, K, 7) normalised, t .. t+K-1
    success: torch.Tensor  # (B, K + 1)
    grasp: torch.Tensor  # (B, K + 1)


def make_sequences(bank: EpisodeBank, rows: torch.Tensor, unroll: int, stats: dict) -> Sequence:
    steps = rows[:, None] + torch.arange(unroll + 1)  # (B, K + 1): t .. t+K, inside the episode
    prev = torch.maximum(rows - 1, bank.episode_start[rows])[:, None]
    c = bank.columns
    return Sequence(
        frames=bank.frames[torch.cat([prev, steps], dim=1)].float() / 255,
        state=normalize(c[STATE][steps], stats[STATE]),
        env_state=normalize(c[ENV_STATE][steps], stats[ENV_STATE]),
        action=normalize(c[ACTION][steps[:, :-1]], stats[ACTION]),
        success=c[SUCCESS][steps].squeeze(-1),
        grasp=c[GRASP][steps].squeeze(-1),
    )


# ---------------------------------------------------------------------------------------------- loss
def compute_loss(dynamics, probe, seq: Sequence, loss_cfg: DictConfig) -> tuple[torch.Tensor, dict]:
    """Autoregressive frame and state losses over the unroll, probe losses on real and predicted frames."""
    K = seq.action.shape[1]
    prev, frame, state = seq.frames[:, 0], seq.frames[:, 1], seq.state[:, 0]
    frame_l1 = frame_mse = state_mse = 0.0
    predicted = []
    for k in range(K):
        frame_next, state = dynamics(prev, frame, state, seq.action[:, k])
        real = seq.frames[:, k + 2]
        frame_l1 = frame_l1 + (frame_next - real).abs().mean() / K
        frame_mse = frame_mse + (frame_next - real).pow(2).mean() / K
        state_mse = state_mse + (state - seq.state[:, k + 1]).pow(2).mean() / K
        predicted.append(frame_next)
        prev, frame = frame, frame_next
    real_frames = seq.frames[:, 2:].flatten(0, 1)  # (B K, 3, H, W)
    both = torch.cat([real_frames, torch.stack(predicted, 1).flatten(0, 1).detach()])
    labels = [
        torch.cat([x[:, 1:].flatten(0, 1)] * 2) for x in (seq.state, seq.env_state, seq.success, seq.grasp)
    ]
    p_total, p_terms = probe_loss(probe(both), *labels)
    terms = {"frame_l1": frame_l1, "frame_mse": frame_mse, "state_mse": state_mse} | p_terms
    total = loss_cfg.frame * (frame_l1 + frame_mse) + loss_cfg.state * state_mse + loss_cfg.probe * p_total
    return total, terms


# ---------------------------------------------------------------------------------------------- eval
@torch.no_grad()
def evaluate(dynamics, probe, bank: EpisodeBank, stats: dict, unroll: int, num: int = 64) -> dict:
    """One-batch held-out check: PSNR of the last unrolled frame against copying frame t, judge accuracy."""
    rows = start_rows(bank, unroll)
    rows = rows[torch.linspace(0, len(rows) - 1, min(num, len(rows))).long()]
    seq = make_sequences(bank, rows, unroll, stats)
    prev, frame, state = seq.frames[:, 0], seq.frames[:, 1], seq.state[:, 0]
    for k in range(unroll):
        next_frame, state = dynamics(prev, frame, state, seq.action[:, k])
        prev, frame = frame, next_frame
    out = probe(seq.frames[:, -1])
    judged = (out.success_logit > 0) == (seq.success[:, -1] > 0.5)
    return {
        "psnr_last": psnr(frame, seq.frames[:, -1]).mean().item(),
        "psnr_copy": psnr(seq.frames[:, 1], seq.frames[:, -1]).mean().item(),
        "judge_acc_real": judged.float().mean().item(),
    }


# ---------------------------------------------------------------------------------------------- training
def train(cfg: DictConfig) -> dict:
    tcfg = cfg.train.neural_sim
    out_dir = Path(tcfg.out_dir)
    torch.manual_seed(tcfg.seed)
    device = torch.device(tcfg.device)
    bank = load_rollouts(tcfg.dataset, cfg.task.image_key)
    train_eps, val_eps = split_episodes(len(bank.episodes), tcfg.val_fraction, tcfg.seed)
    train_bank = bank.subset([bank.episodes[i] for i in train_eps])
    val_bank = bank.subset([bank.episodes[i] for i in val_eps])
    model_cfg = NeuralSimConfig(**OmegaConf.to_container(cfg.model.neural_sim, resolve=True))
    if model_cfg.image_size != bank.frames.shape[-1]:
        raise ValueError(
            f"{tcfg.dataset} has {bank.frames.shape[-1]}-pixel frames, the model takes {model_cfg.image_size}"
        )
    dynamics, probe = NeuralDynamics(model_cfg).to(device), FrameProbe(model_cfg).to(device)
    params = [*dynamics.parameters(), *probe.parameters()]
    optimizer = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    gen = torch.Generator().manual_seed(tcfg.seed)
    stats = statistics(train_bank)
    modules = {"dynamics": dynamics, "probe": probe}
    meta = {
        "model_config": model_cfg.to_dict(),
        "stats": stats,
        "unroll": tcfg.unroll,
        "dataset": str(tcfg.dataset),
    }

    start = 0
    restore_interrupted_swap(out_dir)
    if tcfg.resume and has_checkpoint(out_dir):
        hint = "use another train.neural_sim.out_dir or set train.neural_sim.resume=false"
        start = load_checkpoint(out_dir, modules, optimizer, gen, model_cfg.to_dict(), hint)["step"]
        print(f"resuming from {out_dir / CKPT_DIR} at step {start}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    rows = start_rows(train_bank, tcfg.unroll)
    print(
        f"neural simulator: dynamics {sum(p.numel() for p in dynamics.parameters()) / 1e6:.2f}M, probe "
        f"{sum(p.numel() for p in probe.parameters()) / 1e6:.2f}M parameters; {len(rows)} training sequences "
        f"of {tcfg.unroll} steps from {len(train_bank.episodes)} episodes, {len(val_bank.episodes)} held out"
    )
    writer = SummaryWriter(str(out_dir / "tb"), purge_step=start)
    clock = time.perf_counter()
    progress = tqdm(range(start, tcfg.steps), initial=start, total=tcfg.steps, desc="neural sim", unit="step")
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = tcfg.lr * min(1.0, (step + 1) / tcfg.lr_warmup)
        pick = rows[torch.randint(len(rows), (tcfg.batch_size,), generator=gen)]
        seq = make_sequences(train_bank, pick, tcfg.unroll, stats)
        seq = Sequence(*(t.to(device) for t in vars(seq).values()))
        loss, terms = compute_loss(dynamics, probe, seq, tcfg.loss)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at step {step}; the last good checkpoint is kept"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
        optimizer.step()
        if (step + 1) % tcfg.log_every == 0:
            for k, v in terms.items():
                writer.add_scalar(f"train/{k}", float(v.detach()), step + 1)
            progress.set_postfix(
                l1=f"{terms['frame_l1'].item():.4f}", judge=f"{terms['judge_bce'].item():.3f}"
            )
        if (step + 1) % tcfg.val_every == 0 or step + 1 == tcfg.steps:
            for k, v in evaluate(dynamics, probe, val_bank, stats, tcfg.unroll).items():
                writer.add_scalar(f"val/{k}", v, step + 1)
        if (step + 1) % tcfg.ckpt_every == 0 or step + 1 == tcfg.steps:
            save_checkpoint(out_dir, modules, optimizer, step + 1, gen, meta)
    progress.close()
    writer.close()
    summary = {"steps": tcfg.steps, "resumed_at": start, "minutes": (time.perf_counter() - clock) / 60}
    summary |= evaluate(dynamics, probe, val_bank, stats, tcfg.unroll)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


# ---------------------------------------------------------------------------------------------- inference
class NeuralSim:
    """A trained neural simulator for inference: raw (unnormalised) states and actions in and out."""

    def __init__(self, dynamics: NeuralDynamics, probe: FrameProbe, stats: dict, unroll: int):
        self.dynamics, self.probe, self.stats, self.unroll = dynamics.eval(), probe.eval(), stats, unroll
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
    def step(self, prev, frame, state, action) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B, 3, H, W) in [0, 1], raw state and action (B, 7) -> next frame, next raw state."""
        action = normalize(self.clip_action(action), self.stats[ACTION])
        next_frame, next_state = self.dynamics(prev, frame, normalize(state, self.stats[STATE]), action)
        return next_frame, denormalize(next_state, self.stats[STATE])

    @torch.no_grad()
    def read(self, frame) -> dict[str, torch.Tensor]:
        """What the probe sees in frames (B, 3, H, W): raw robot state, object poses, success, grasp."""
        out = self.probe(frame)
        return {
            "state": denormalize(out.state, self.stats[STATE]),
            "env_state": denormalize(out.env_state, self.stats[ENV_STATE]),
            "success": torch.sigmoid(out.success_logit),
            "grasp": torch.sigmoid(out.grasp_logit),
        }


def load_neural_sim(path: str | Path) -> NeuralSim:
    path = Path(path)
    ckpt = path / CKPT_DIR if (path / CKPT_DIR).is_dir() else path
    if not (ckpt / "dynamics.safetensors").is_file():
        raise FileNotFoundError(
            f"no neural simulator checkpoint at {path} (expected {CKPT_DIR}/dynamics.safetensors)"
        )
    meta = json.loads((ckpt / "state.json").read_text())
    cfg = NeuralSimConfig(**meta["model_config"])
    dynamics, probe = NeuralDynamics(cfg), FrameProbe(cfg)
    dynamics.load_state_dict(load_file(ckpt / "dynamics.safetensors"))
    probe.load_state_dict(load_file(ckpt / "probe.safetensors"))
    return NeuralSim(dynamics, probe, meta["stats"], meta["unroll"])


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    summary = train(cfg)
    print(json.dumps(summary, indent=1))
    print(f"checkpoint: {Path(cfg.train.neural_sim.out_dir) / CKPT_DIR}")
    print("command: python -m world_model.train_neural_sim " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
