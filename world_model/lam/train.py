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
from data.clips import flow_targets, to_uint8_hwc
from world_model.lam.losses import FlowNet, ramp
from world_model.lam.model import LAMConfig, LatentActionModel
from world_model.lam.quantize import code_stats
from world_model.metrics import psnr, ssim
from world_model.training.checkpoint import CKPT_DIR
from world_model.training.distributed import broadcast_from_main
from world_model.training.trainer import Trainer, TrainTask, millions, print_run


# ---------------------------------------------------------------------------------------------- data
def load_banks(cfg: DictConfig, image_key: str, clip_len: int, image_size: int) -> tuple[Clips, Clips]:
    """The clips of the training and the held-out episodes."""
    bank = EpisodeBank.load(cfg.dataset, image_key, columns=[])
    size = bank.frames.shape[-2:]
    if tuple(size) != (image_size, image_size):
        raise ValueError(
            f"{image_key!r} in {cfg.dataset} is {size[0]}x{size[1]}, the model takes {image_size}x{image_size}; "
            "set task.image_size to match (or regenerate the data at that size)"
        )
    train_eps, val_eps = split_episodes(len(bank.episodes), cfg.val_fraction, cfg.seed)
    pick = bank.episodes
    return Clips.of(bank.subset([pick[i] for i in train_eps]), clip_len), Clips.of(
        bank.subset([pick[i] for i in val_eps]), clip_len
    )


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
    missing = set(terms) - set(loss_cfg)
    if missing:
        raise KeyError(f"train.lam.loss has no weight for {sorted(missing)}; it has {sorted(loss_cfg)}")
    weights = {k: loss_cfg[k].weight * ramp(step, loss_cfg[k].start, loss_cfg[k].warmup) for k in terms}
    total = sum(weights[k] * v for k, v in terms.items()) + out.quantizer_loss
    return total, terms, weights, out


class Objective(torch.nn.Module):
    """The model and the flow estimator it trains beside, as one module whose forward is the loss, so
    that one DDP wrapper sees every parameter (and `flow_net.frozen` stays inside the forward)."""

    def __init__(self, model: LatentActionModel, flow_net: FlowNet, loss_cfg: DictConfig):
        super().__init__()
        self.model, self.flow_net, self.loss_cfg = model, flow_net, loss_cfg

    def forward(self, clips: torch.Tensor, step: int, j: torch.Tensor):
        """-> (loss, terms): the loss terms, their weights (weight/<term>) and the codes' batch statistics."""
        total, terms, weights, out = compute_loss(self.model, self.flow_net, clips, step, self.loss_cfg, j=j)
        stats = code_stats(out.codes.flatten(), self.model.quantizer.num_codes)
        logged = {"quantizer_loss": out.quantizer_loss, "batch_perplexity": stats["perplexity"]}
        return total, terms | {f"weight/{k}": w for k, w in weights.items()} | logged


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
        shuffled = model.decode(clips[:, 0], out.latents.roll(1, dims=0))
        pred_db.append(psnr(rollout[:, -1], clips[:, -1]))
        copy_db.append(psnr(clips[:, 0], clips[:, -1]))
        shuffled_db.append(psnr(shuffled[:, -1], clips[:, -1]))
        step_db.append(psnr(out.predicted, clips[:, 1:]).mean(1) - psnr(clips[:, :-1], clips[:, 1:]).mean(1))
        codes.append(out.codes.flatten())
    model.train()
    db = {k: torch.cat(v).mean().item() for k, v in (("psnr_pred", pred_db), ("psnr_copy_last", copy_db))}
    db["latent_gain_db"] = db["psnr_pred"] - torch.cat(shuffled_db).mean().item()
    db["one_step_gain_db"] = torch.cat(step_db).mean().item()  # next frame vs copying the previous one
    return db | code_stats(torch.cat(codes), model.quantizer.num_codes)


# ---------------------------------------------------------------------------------------------- training
class LAMTask(TrainTask):
    """The latent action model and its flow estimator on clips of actionless video."""

    progress_keys = ("l1",)

    def __init__(self, cfg: DictConfig, device: torch.device):
        tcfg = self.tcfg = cfg.train.lam
        model_cfg = LAMConfig(**OmegaConf.to_container(cfg.model.lam, resolve=True))
        self.model, flow_net = LatentActionModel(model_cfg).to(device), FlowNet().to(device)
        self.modules = {"model": self.model, "flow_net": flow_net}
        self.objective = Objective(self.model, flow_net, tcfg.loss)
        self.lr, self.weight_decay, self.lr_floor = tcfg.lr, tcfg.weight_decay, tcfg.lr_min / tcfg.lr
        self.device, self.clip_len = device, model_cfg.clip_len
        self.train_bank, self.val_bank = load_banks(
            tcfg, cfg.task.image_key, model_cfg.clip_len, model_cfg.image_size
        )
        self.model_config = model_cfg.to_dict()
        self.meta = {
            "val_episodes": self.val_bank.episodes,
            "dataset": str(tcfg.dataset),
            "image_key": cfg.task.image_key,
        }

    def describe(self) -> str:
        return (
            f"latent action model: {millions(self.model)} parameters; "
            f"{len(self.train_bank)} training clips, {len(self.val_bank)} held out "
            f"({len(self.val_bank.episodes)} episodes)"
        )

    def draw(self, step: int, gen: torch.Generator, size: int):
        rows = torch.randint(len(self.train_bank), (size,), generator=gen)
        return rows, torch.randint(
            self.clip_len - 1, (size,), generator=gen
        )  # the transition each clip scores

    def micro_batch(self, draw, positions: torch.Tensor, step: int) -> tuple:
        rows, transitions = draw
        return self.train_bank.clips(rows[positions]).to(self.device), step, transitions[positions]

    def after_step(self, step: int, trainer) -> dict[str, float]:
        replaced = revive_dead_codes(self.model, step, self.tcfg)
        if step == trainer.start or codes_due(step, self.tcfg):  # the codebook changed outside the optimizer
            broadcast_from_main(self.model.quantizer, trainer.accelerator)
        return {"train/dead_codes_replaced": replaced} if replaced else {}

    def validate(self, step: int, model: LatentActionModel) -> dict[str, float]:
        return evaluate(model, self.val_bank, self.tcfg.val_clips)

    def summary(self, last_terms: dict, model: LatentActionModel) -> dict:
        return evaluate(model, self.val_bank, self.tcfg.val_clips)


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
