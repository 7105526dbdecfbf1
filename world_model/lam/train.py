"""Train the latent action model on actionless video (any LeRobotDataset v3 with a camera key).

    python -m world_model.lam.train                                # CPU profile, outputs/lam
    python -m world_model.lam.train train.lam.steps=200 train.lam.out_dir=/tmp/lam
    python -m world_model.lam.train model/lam=gpu train/lam=gpu task=bridge_gpu

Runs resume from the last checkpoint in `out_dir` (bit-exact on CPU: model, optimizer, codebook usage
and every random generator are saved). Checkpoints are safetensors written to a temporary folder and
renamed; a non-finite loss stops training with a message and leaves the last good checkpoint alone.
"""

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from data.chunks import Clips, EpisodeBank, split_episodes
from data.clips import flow_targets, random_shift, shift_offsets, to_uint8_hwc
from world_model.lam.losses import FlowNet, masked_mse, motion_mask, ramp
from world_model.lam.model import LAMConfig, LatentActionModel
from world_model.lam.quantize import code_stats
from world_model.metrics import psnr, ssim
from world_model.training.checkpoint import CKPT_DIR
from world_model.training.distributed import broadcast_from_main
from world_model.training.trainer import Trainer, TrainTask, millions, print_run


# ---------------------------------------------------------------------------------------------- data
def check_size(bank: EpisodeBank, dataset, image_key: str, image_size: int) -> None:
    size = bank.frames.shape[-2:]
    if tuple(size) != (image_size, image_size):
        raise ValueError(
            f"{image_key!r} in {dataset} is {size[0]}x{size[1]}, the model takes {image_size}x{image_size}; "
            "set task.image_size to match (or regenerate the data at that size)"
        )


def load_banks(cfg: DictConfig, image_key: str, model_cfg: LAMConfig) -> tuple[Clips, Clips]:
    """The clips of the training and the held-out episodes."""
    bank = EpisodeBank.load(cfg.dataset, image_key, columns=[])
    check_size(bank, cfg.dataset, image_key, model_cfg.image_size)
    train_eps, val_eps = split_episodes(len(bank.episodes), cfg.val_fraction, cfg.seed)
    pick, clip_len, stride = bank.episodes, model_cfg.clip_len, model_cfg.frame_stride
    return Clips.of(bank.subset([pick[i] for i in train_eps]), clip_len, stride), Clips.of(
        bank.subset([pick[i] for i in val_eps]), clip_len, stride
    )


class LabelledClips:
    """The first `episodes` episodes of a labelled demo dataset as clips, with each transition's action
    standardized: what `ours_lam_supervised` reads its few true actions from (LAOM's 2.5% of labels)."""

    def __init__(self, scfg: DictConfig, image_key: str, action_key: str, clip_len: int, image_size: int):
        bank = EpisodeBank.load(scfg.dataset, image_key, [action_key], episodes=list(range(scfg.episodes)))
        check_size(bank, scfg.dataset, image_key, image_size)
        self.windows = Clips.of(bank, clip_len)
        self.episodes = bank.episodes
        actions = bank.columns[action_key]  # (F, A): the action at frame i moves i -> i+1
        # Constant dimensions (unused rotations) get a target of zero rather than a division by zero.
        self.targets = (actions - actions.mean(0)) / actions.std(0).clamp_min(1e-6)
        self.targets[:, actions.std(0) < 1e-6] = 0
        self.action_dim = actions.shape[1]

    def __len__(self) -> int:
        return len(self.windows)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) clip indices -> clips (B, T, 3, H, W) and the standardized actions of their T-1 transitions."""
        rows = self.windows.starts[idx][:, None] + torch.arange(self.windows.clip_len - 1)
        return self.windows.clips(idx), self.targets[rows]


# ---------------------------------------------------------------------------------------------- loss
def compute_loss(
    model,
    flow_net,
    clips: torch.Tensor,
    step: int,
    loss_cfg: DictConfig,
    gen: torch.Generator | None = None,
    j: torch.Tensor | None = None,
):
    """Total loss and its terms for clips (B, T, 3, H, W). Every step is predicted from the real frame
    before it; one random step j per clip (B,), drawn from `gen` unless given, feeds SSIM and the flow
    terms (an unbiased estimate at 1/(T-1) of the cost)."""
    out = model(clips)
    real = clips[:, 1:]
    B, S = real.shape[:2]
    j = torch.randint(S, (B,), generator=gen) if j is None else j
    rows = torch.arange(B)
    prev_j, real_j, pred_j = clips[rows, j], real[rows, j], out.predicted[rows, j]
    prev_u8, real_u8 = to_uint8_hwc(prev_j), to_uint8_hwc(real_j)
    dis = torch.from_numpy(flow_targets(prev_u8, real_u8)).to(clips.device)  # for the flow estimator
    flow_real = flow_net(prev_j, real_j)
    error = out.predicted - real
    terms = {
        "mse": error.pow(2).mean(),
        # The robot moves 1-2 pixels a step at 64x64: over the whole frame, copying it costs little and the
        # latents that say where it went are worth little. Scored where the frame changed, they are not.
        "mse_motion": masked_mse(error, motion_mask(clips[:, :-1], real)),
        "l1": error.abs().mean(),
        "ssim": 1 - ssim(pred_j, real_j),
        "flow": (flow_net.frozen(prev_j, pred_j) - flow_real.detach()).abs().mean(),
        "flow_net": (flow_real - dis).abs().mean(),
    }
    if loss_cfg.get("decoder_flow", {}).get("weight", 0) > 0:  # a second DIS pass: only when it is used
        dis_back = torch.from_numpy(flow_targets(real_u8, prev_u8)).to(
            clips.device
        )  # what the decoder warps by
        terms["decoder_flow"] = (out.flow[rows, j] - dis_back).abs().mean()
    if out.embedding_loss is not None:  # model.lam.target=embedding: what trains the inverse dynamics
        terms["embedding"] = out.embedding_loss
    missing = set(terms) - set(loss_cfg)
    if missing:
        raise KeyError(f"train.lam.loss has no weight for {sorted(missing)}; it has {sorted(loss_cfg)}")
    weights = {k: loss_cfg[k].weight * ramp(step, loss_cfg[k].start, loss_cfg[k].warmup) for k in terms}
    total = sum(weights[k] * v for k, v in terms.items()) + out.quantizer_loss
    return total, terms, weights, out


def action_loss(model: LatentActionModel, head: torch.nn.Module, clips: torch.Tensor, actions: torch.Tensor):
    """MSE of the true (standardized) actions (B, T-1, A) read linearly off the clips' quantized latents."""
    latents = model.encode(clips).z_q.flatten(2)  # (B, T-1, N * code_dim)
    return (head(latents) - actions).pow(2).mean()


class Objective(torch.nn.Module):
    """The model and the flow estimator it trains beside (and with action supervision, its action head),
    as one module whose forward is the loss, so that one DDP wrapper sees every parameter (and
    `flow_net.frozen` stays inside the forward)."""

    def __init__(
        self,
        model: LatentActionModel,
        flow_net: FlowNet,
        loss_cfg: DictConfig,
        action_head: torch.nn.Module | None = None,
        action_weight: float = 0.0,
    ):
        super().__init__()
        self.model, self.flow_net, self.loss_cfg = model, flow_net, loss_cfg
        self.action_head, self.action_weight = action_head, action_weight

    def forward(self, clips: torch.Tensor, step: int, j: torch.Tensor, labelled: tuple | None = None):
        """-> (loss, terms): the loss terms, their weights (weight/<term>) and the codes' batch statistics.
        `labelled`: demo clips and their actions, for the action supervision term."""
        supervised = {}
        if labelled is not None:  # first, so the codebook's record of recent latents is the video's
            supervised["action"] = action_loss(self.model, self.action_head, *labelled)
        total, terms, weights, out = compute_loss(self.model, self.flow_net, clips, step, self.loss_cfg, j=j)
        if supervised:
            total = total + self.action_weight * supervised["action"]
        logged = {"quantizer_loss": out.quantizer_loss}
        if out.codes is not None:
            stats = code_stats(out.codes.flatten(), self.model.quantizer.num_codes)
            logged["batch_perplexity"] = stats["perplexity"]
        return total, terms | supervised | {f"weight/{k}": w for k, w in weights.items()} | logged


# ---------------------------------------------------------------------------------------------- eval
@torch.no_grad()
def evaluate(model, bank: Clips, num_clips: int, batch_size: int = 32) -> dict:
    """On held-out clips: PSNR of the last frame rolled out from the first and the latents vs copying
    the first; its loss when the latents come from another clip (latent_gain_db); code usage."""
    model.eval()
    idx = torch.linspace(0, len(bank) - 1, min(num_clips, len(bank))).round().long()
    pred_db, copy_db, shuffled_db, step_db, codes = [], [], [], [], []
    for chunk in idx.split(batch_size):
        clips = bank.clips(chunk).to(next(model.parameters()).device)
        out = model(clips)
        rollout = model.decode(clips[:, 0], out.latents)  # frame t+k from frame t and the latents alone
        # Another clip's latents: how much of the prediction comes from the latents, not the frame alone.
        # The clips are in dataset order, so a neighbour is the same episode a few steps on (moving much
        # alike): half a batch away is another episode.
        shuffled = model.decode(clips[:, 0], out.latents.roll(max(1, len(chunk) // 2), dims=0))
        pred_db.append(psnr(rollout[:, -1], clips[:, -1]))
        copy_db.append(psnr(clips[:, 0], clips[:, -1]))
        shuffled_db.append(psnr(shuffled[:, -1], clips[:, -1]))
        step_db.append(psnr(out.predicted, clips[:, 1:]).mean(1) - psnr(clips[:, :-1], clips[:, 1:]).mean(1))
        if out.codes is not None:
            codes.append(out.codes.flatten())
    model.train()
    db = {k: torch.cat(v).mean().item() for k, v in (("psnr_pred", pred_db), ("psnr_copy_last", copy_db))}
    db["latent_gain_db"] = db["psnr_pred"] - torch.cat(shuffled_db).mean().item()
    db["one_step_gain_db"] = torch.cat(step_db).mean().item()  # next frame vs copying the previous one
    if model.embedding_fdm is not None:
        db |= embedding_scores(model, bank, idx, batch_size)
    return db | code_stats(torch.cat(codes) if codes else None, model.quantizer.num_codes)


@torch.no_grad()
def embedding_scores(model, bank: Clips, idx: torch.Tensor, batch_size: int) -> dict:
    """model.lam.target=embedding, on held-out clips: the next embeddings' error with the clips' own latents,
    with another clip's (their ratio says how much the latents tell), and the targets' spread over clips
    and positions (a collapsed target encoder gives the same embedding everywhere: 0)."""
    fdm, own, other, spread = model.embedding_fdm, [], [], []
    model.eval()
    for chunk in idx.split(batch_size):
        clips = bank.clips(chunk).to(next(model.parameters()).device)
        latents, target = model.encode(clips).z_q, fdm.targets(clips[:, 1:])
        own.append((fdm(clips[:, :-1], latents) - target).pow(2).mean().item())
        shuffled = latents.roll(max(1, len(chunk) // 2), dims=0)  # another episode's, as latent_gain_db
        other.append((fdm(clips[:, :-1], shuffled) - target).pow(2).mean().item())
        spread.append(target.flatten(0, 2).std(0).mean().item())
    model.train()
    own_mse, other_mse = sum(own) / len(own), sum(other) / len(other)
    return {
        "embedding_mse": own_mse,
        "embedding_mse_other_latents": other_mse,
        "embedding_latent_gain": other_mse / max(own_mse, 1e-12),
        "embedding_target_spread": sum(spread) / len(spread),
    }


# ---------------------------------------------------------------------------------------------- training
class LAMTask(TrainTask):
    """The latent action model and its flow estimator on clips of actionless video."""

    progress_keys = ("l1",)

    def __init__(self, cfg: DictConfig, device: torch.device):
        tcfg = self.tcfg = cfg.train.lam
        model_cfg = LAMConfig(**OmegaConf.to_container(cfg.model.lam, resolve=True))
        self.model, flow_net = LatentActionModel(model_cfg).to(device), FlowNet().to(device)
        self.modules = {"model": self.model, "flow_net": flow_net}
        self.labelled, head, sup = None, None, tcfg.get("action_supervision")
        if sup is not None and sup.weight > 0:  # ours_lam_supervised; off, the model never sees an action
            if model_cfg.frame_stride != 1:
                raise ValueError(
                    "action supervision reads one action per transition: it needs frame_stride 1"
                )
            self.labelled = LabelledClips(
                sup, cfg.task.image_key, cfg.task.action_key, model_cfg.clip_len, model_cfg.image_size
            )
            latent_dim = model_cfg.tokens_per_step * model_cfg.code_dim
            head = self.modules["action_head"] = torch.nn.Linear(latent_dim, self.labelled.action_dim).to(
                device
            )
        self.objective = Objective(
            self.model, flow_net, tcfg.loss, head, sup.weight if head is not None else 0.0
        )
        self.lr, self.weight_decay, self.lr_floor = tcfg.lr, tcfg.weight_decay, tcfg.lr_min / tcfg.lr
        self.device, self.clip_len = device, model_cfg.clip_len
        self.train_bank, self.val_bank = load_banks(tcfg, cfg.task.image_key, model_cfg)
        self.model_config = model_cfg.to_dict()
        self.meta = {
            "val_episodes": self.val_bank.episodes,
            "dataset": str(tcfg.dataset),
            "image_key": cfg.task.image_key,
        }
        if self.labelled is not None:  # benchmarks score the latents on other episodes than these
            self.meta["supervised_episodes"] = self.labelled.episodes

    def describe(self) -> str:
        supervised = (
            f"; true actions of {len(self.labelled)} clips of {len(self.labelled.episodes)} demo episodes"
            if self.labelled is not None
            else ""
        )
        return (
            f"latent action model: {millions(self.model)} parameters; "
            f"{len(self.train_bank)} training clips, {len(self.val_bank)} held out "
            f"({len(self.val_bank.episodes)} episodes){supervised}"
        )

    def draw(self, step: int, gen: torch.Generator, size: int):
        rows = torch.randint(len(self.train_bank), (size,), generator=gen)
        transitions = torch.randint(self.clip_len - 1, (size,), generator=gen)  # the one each clip scores
        # One labelled clip per row; each micro-batch reads the first batch_size / batch of its rows' share.
        labelled = (
            torch.randint(len(self.labelled), (size,), generator=gen) if self.labelled is not None else None
        )
        # Drawn only when used, so runs without the shift keep their random stream.
        shift = self.tcfg.get("shift", 0)
        offsets = shift_offsets(size, shift, gen) if shift > 0 else None
        return rows, transitions, labelled, offsets

    def micro_batch(self, draw, positions: torch.Tensor, step: int) -> tuple:
        rows, transitions, labelled, offsets = draw
        clips = self.train_bank.clips(rows[positions])
        if offsets is not None:  # one shift per clip: the motion between its frames is kept
            clips = random_shift(clips, self.tcfg.shift, offsets=offsets[:, positions])
        clips = clips.to(self.device)
        if labelled is None:
            return clips, step, transitions[positions]
        share = self.tcfg.action_supervision.batch_size / self.tcfg.batch_size
        demo_clips, actions = self.labelled.batch(
            labelled[positions][: max(1, round(len(positions) * share))]
        )
        return clips, step, transitions[positions], (demo_clips.to(self.device), actions.to(self.device))

    def after_step(self, step: int, trainer) -> dict[str, float]:
        if self.model.embedding_fdm is not None:  # the same update on every process
            self.model.embedding_fdm.update_target()
        replaced = revive_dead_codes(self.model, step, self.tcfg)
        if step == trainer.start or codes_due(step, self.tcfg):  # the codebook changed outside the optimizer
            broadcast_from_main(self.model.quantizer, trainer.accelerator)
        return {"train/dead_codes_replaced": replaced} if replaced else {}

    def validate(self, step: int, model: LatentActionModel) -> dict[str, float]:
        return evaluate(model, self.val_bank, self.tcfg.val_clips)

    def summary(self, last_terms: dict, model: LatentActionModel) -> dict:
        supervised = {"action_loss": float(last_terms["action"])} if "action" in last_terms else {}
        return evaluate(model, self.val_bank, self.tcfg.val_clips) | supervised


def train(cfg: DictConfig) -> dict:
    """Train (or resume) the latent action model of `cfg.model.lam` with `cfg.train.lam`; returns a summary."""
    return Trainer(cfg.train.lam, "lam", cfg).fit(lambda device: LAMTask(cfg, device))


def codes_due(step: int, tcfg: DictConfig) -> bool:
    """Whether dead codes are re-seeded after this step (the same answer on every process)."""
    return step < tcfg.dead_codes.until * tcfg.steps and (step + 1) % tcfg.dead_codes.every == 0


def revive_dead_codes(model, step: int, tcfg: DictConfig) -> int:
    """Every `dead_codes.every` steps until a fraction of training, re-seed unused codes (VQ / NSVQ only).

    Runs right after the step whose latents it re-seeds from, so resuming from a checkpoint changes nothing."""
    quantizer = model.quantizer
    if not hasattr(quantizer, "replace_dead_codes") or not codes_due(step, tcfg):
        return 0
    return quantizer.replace_dead_codes()


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    print_run(train(cfg), "checkpoint", Path(cfg.train.lam.out_dir) / CKPT_DIR, "world_model.lam.train")


if __name__ == "__main__":
    main()
