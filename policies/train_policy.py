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
from random weights and learns at the full rate (Scratch-FM). Writes `<out_dir>/pretrained_model`
(`save_pretrained`: config.json + model.safetensors with the normalization statistics) and resumable
training checkpoints in `<out_dir>/checkpoints/last`. With `model.policy.context=state` (state_fm) the
same loop trains the decoder on the privileged object poses instead of frames; with
`train.policy.ema.decay` the saved policy holds an exponential moving average of the weights.
"""

import copy
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import hydra
import torch
from lerobot.configs import FeatureType, PolicyFeature
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from data.chunks import EpisodeBank
from data.clips import random_shift, shift_offsets
from policies.vipra import VipraConfig, VipraPolicy
from policies.vipra.configuration_vipra import ACTION_KEY, ENV_STATE_KEY, STATE_KEY
from world_model.checkpoint import (
    CKPT_DIR,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from world_model.distributed import (
    accumulation,
    check_same_start,
    finite_everywhere,
    is_main_process,
    make_accelerator,
    restore_on_main,
    seed_process,
    shard_rows,
)
from world_model.train_backbone import load_backbone

PRETRAINED_DIR = "pretrained_model"


def make_batch(
    bank: EpisodeBank,
    rows: torch.Tensor,
    horizon: int,
    image_key: str,
    shift: int,
    offsets: torch.Tensor | None = None,
) -> dict:
    """Rows of frames t -> a LeRobot training batch; `offsets` (2, B) are the random shifts. With
    `image_key` None (the state context) the batch has the object poses instead of frames."""
    w = bank.window(rows, horizon)
    batch = {
        STATE_KEY: bank.columns[STATE_KEY][rows],
        ACTION_KEY: bank.columns[ACTION_KEY][w.chunk],
        "action_is_pad": w.chunk_is_pad,
        "task": [bank.tasks[i] for i in rows.tolist()],
    }
    if image_key is None:
        return batch | {ENV_STATE_KEY: bank.columns[ENV_STATE_KEY][rows]}
    frames = random_shift(bank.frames[w.context].float() / 255, shift, offsets=offsets)  # (B, 2, 3, H, W)
    return batch | {image_key: frames}


def dataset_stats(bank: EpisodeBank) -> dict:
    return {k: {"mean": v.mean(0), "std": v.std(0)} for k, v in bank.columns.items()}


def reads_state_context(cfg: DictConfig) -> bool:
    return cfg.model.policy.get("context", "video") == "state"


def build_policy(cfg: DictConfig, bank: EpisodeBank) -> VipraPolicy:
    """The policy for this run: backbone config (and weights) from the pretrained checkpoint if any."""
    pcfg = OmegaConf.to_container(cfg.model.policy, resolve=True)
    size, state, action = bank.frames.shape[-1], bank.columns[STATE_KEY], bank.columns[ACTION_KEY]
    inputs = {STATE_KEY: PolicyFeature(FeatureType.STATE, (state.shape[1],))}
    if reads_state_context(cfg):  # state_fm: privileged object poses, no camera
        inputs[ENV_STATE_KEY] = PolicyFeature(FeatureType.ENV, (bank.columns[ENV_STATE_KEY].shape[1],))
        if cfg.train.policy.backbone:
            raise ValueError(
                f"the state context has no backbone: set train.policy.backbone=null (got {cfg.train.policy.backbone})"
            )
    else:
        inputs[cfg.task.image_key] = PolicyFeature(FeatureType.VISUAL, (3, size, size))
    features = {
        "input_features": inputs,
        "output_features": {ACTION_KEY: PolicyFeature(FeatureType.ACTION, (action.shape[1],))},
    }
    backbone_path = cfg.train.policy.backbone
    pretrained = load_backbone(backbone_path) if backbone_path else None
    backbone_cfg = pretrained.cfg.to_dict() if pretrained else dict(pcfg.pop("backbone_scratch"))
    pcfg.pop("backbone_scratch", None)
    if not pretrained:
        pcfg["backbone_lr_scale"] = 1.0  # Scratch-FM: the whole network learns at the full rate
    config = VipraConfig(**pcfg, **features, backbone=backbone_cfg, device=cfg.train.policy.device)
    policy = VipraPolicy(config, dataset_stats(bank))
    if pretrained:
        policy.backbone.load_state_dict(pretrained.state_dict())
    return policy


def save_pretrained_atomic(policy: VipraPolicy, out: Path) -> None:
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


class WeightAverage:
    """An exponential moving average of the policy's weights (diffusers' EMAModel, with its warm-up:
    decay 1 - (1 + step)^-power, capped at `decay`), kept in a copy of the policy so that training
    checkpoints save it and `save_pretrained` writes the averaged weights, as diffusion_policy does."""

    def __init__(self, policy: VipraPolicy, decay: float, power: float):
        from diffusers.training_utils import EMAModel

        self.policy = copy.deepcopy(policy)  # holds the averaged weights between checkpoints
        self.ema = EMAModel(policy.parameters(), decay=decay, use_ema_warmup=True, power=power)

    def resume(self, step: int) -> None:
        """Continue from the averaged weights restored into `self.policy` at `step`."""
        self.ema.shadow_params = [p.detach().clone() for p in self.policy.parameters()]
        self.ema.optimization_step = step

    def step(self, policy: VipraPolicy) -> None:
        self.ema.step(policy.parameters())

    def averaged(self) -> VipraPolicy:
        self.ema.copy_to(self.policy.parameters())
        return self.policy


def lr_factor(step: int, tcfg: DictConfig) -> float:
    if step < tcfg.lr_warmup:
        return (step + 1) / tcfg.lr_warmup
    progress = (step - tcfg.lr_warmup) / max(1, tcfg.steps - tcfg.lr_warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))  # cosine to a tenth


def train(cfg: DictConfig) -> dict:
    tcfg = cfg.train.policy
    out_dir = Path(tcfg.out_dir)
    accelerator = make_accelerator(tcfg)
    seed_process(tcfg.seed, accelerator)
    is_main = accelerator.is_main_process
    log = print if is_main else lambda *a, **k: None
    state_context = reads_state_context(cfg)
    columns = [STATE_KEY, ACTION_KEY] + ([ENV_STATE_KEY] if state_context else [])
    bank = EpisodeBank.load(
        tcfg.dataset, cfg.task.image_key, columns, expect_lossless=cfg.task.get("lossless_images", True)
    )
    device = accelerator.device
    policy = build_policy(cfg, bank).to(device)
    policy.train()
    groups = policy.get_optim_params()
    optimizer = torch.optim.AdamW(
        groups, lr=policy.config.optimizer_lr, weight_decay=policy.config.optimizer_weight_decay
    )
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    gen = torch.Generator().manual_seed(tcfg.seed)

    average = WeightAverage(policy, tcfg.ema.decay, tcfg.ema.power) if tcfg.ema.decay else None
    start, modules = 0, {"policy": policy} | ({"ema": average.policy} if average else {})
    restore_on_main(out_dir, accelerator)
    model_config = {
        "policy": OmegaConf.to_container(cfg.model.policy, resolve=True),
        "backbone": tcfg.backbone,
    }
    if tcfg.resume and has_checkpoint(out_dir):
        hint = "use another train.policy.out_dir or set train.policy.resume=false"
        start = load_checkpoint(out_dir, modules, optimizer, gen, model_config, hint)["step"]
        if average:
            average.resume(start)
        log(f"resuming from {out_dir / CKPT_DIR} at step {start}")
        seed_process(tcfg.seed, accelerator, start)
    check_same_start(start, accelerator)
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    n_params = sum(p.numel() for p in policy.parameters()) / 1e6
    log(
        f"policy: {n_params:.2f}M parameters, backbone {'from ' + str(tcfg.backbone) if tcfg.backbone else 'from scratch'}; "
        f"{len(bank)} frames of {len(bank.episodes)} demos; "
        f"{accelerator.num_processes} process(es) x {tcfg.grad_accum} micro-batch(es) per step"
    )
    writer = SummaryWriter(str(out_dir / "tb"), purge_step=start) if is_main else None
    if tcfg.compile:
        policy.compile()  # in place: state_dict keys and checkpoints are unchanged
    micro = tcfg.batch_size // max(1, tcfg.grad_accum * accelerator.num_processes)
    if policy.config.shortcut_fraction > 0 and round(policy.config.shortcut_fraction * micro) == 0:
        raise ValueError(
            f"micro-batches of {micro} rows leave no row for the shortcut loss (shortcut_fraction="
            f"{policy.config.shortcut_fraction}, taken per micro-batch): raise batch_size or lower grad_accum"
        )
    parallel = accelerator.prepare_model(policy)  # DDP (and autocast) when launched on several processes
    clock = time.perf_counter()
    steps = range(start, tcfg.steps)
    progress = tqdm(steps, initial=start, total=tcfg.steps, desc="policy", unit="step", disable=not is_main)
    horizon, key = policy.config.chunk_size, None if state_context else cfg.task.image_key
    for step in progress:
        for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = lr * lr_factor(step, tcfg)
        rows = torch.randint(len(bank), (tcfg.batch_size,), generator=gen)  # the global batch
        offsets = shift_offsets(len(rows), tcfg.shift, gen)
        optimizer.zero_grad(set_to_none=True)
        for mine in accumulation(accelerator, parallel, shard_rows(rows, accelerator, tcfg.grad_accum)):
            batch = make_batch(bank, rows[mine], horizon, key, tcfg.shift, offsets[:, mine])
            loss, terms = parallel({k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
            if not finite_everywhere(loss, accelerator):
                raise FloatingPointError(
                    f"loss is {loss.item()} at step {step} ({terms}); last good checkpoint kept"
                )
            accelerator.backward(loss / tcfg.grad_accum)
        accelerator.clip_grad_norm_(parallel.parameters(), tcfg.grad_clip)
        optimizer.step()
        if average:
            average.step(policy)
        if (step + 1) % tcfg.log_every == 0 and is_main:
            for k, v in terms.items():
                writer.add_scalar(f"train/{k}", v, step + 1)
            progress.set_postfix(fm=f"{terms['fm_loss']:.3f}", sc=f"{terms['shortcut_loss']:.3f}")
        if (step + 1) % tcfg.ckpt_every == 0 or step + 1 == tcfg.steps:
            if is_main:
                if average:
                    average.averaged()  # into modules["ema"]
                save_checkpoint(out_dir, modules, optimizer, step + 1, gen, {"model_config": model_config})
            accelerator.wait_for_everyone()
    progress.close()
    summary = {"steps": tcfg.steps, "resumed_at": start, "minutes": (time.perf_counter() - clock) / 60}
    summary |= {"processes": accelerator.num_processes, "grad_accum": tcfg.grad_accum}
    summary |= (
        {"final_fm_loss": terms["fm_loss"], "final_shortcut_loss": terms["shortcut_loss"]}
        if tcfg.steps > start
        else {}
    )
    if is_main:
        writer.close()
        save_pretrained_atomic(average.averaged() if average else policy, out_dir / PRETRAINED_DIR)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    accelerator.wait_for_everyone()
    return summary


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    summary = train(cfg)
    if not is_main_process():
        return
    print(json.dumps(summary, indent=1))
    print(f"policy: {Path(cfg.train.policy.out_dir) / PRETRAINED_DIR}")
    print("command: python -m policies.train_policy " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
