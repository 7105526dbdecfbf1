"""Pretrain the video-prediction backbone on actionless video labelled by the frozen latent action model.

    python -m world_model.label_lam label.dataset=outputs/datasets/video     # the targets, once
    python -m world_model.train_backbone                                      # CPU profile -> outputs/backbone
    python -m world_model.train_backbone train.backbone.embodiment=robot train.backbone.out_dir=outputs/bb_robot
    python -m world_model.train_backbone train.backbone.loss.frame=0          # ablation: no future frame

Each sample is a frame t of the video with frame t-1, its episode's instruction, frame t+H and the H
latent-action codes from t (-1 past the episode's end, ignored by the loss). Frames are decoded once
into memory and shifted by a few pixels per sample (the same shift for all of a sample's frames).
Held-out episodes measure what the backbone predicts against trivial answers: the frame MSE against
copying frame t, the code accuracy against always naming the most common code.
"""

import json
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from data.chunks import EpisodeBank
from data.clips import random_shift, shift_offsets
from world_model.backbone import BackboneConfig, VideoBackbone, backbone_loss, tokenize
from world_model.checkpoint import (
    CKPT_DIR,
    has_checkpoint,
    load_checkpoint,
    load_trained,
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
from world_model.train_lam import lr_at, split_episodes

EMBODIMENTS = {"robot": 0, "hand": 1}


# ---------------------------------------------------------------------------------------------- data
def load_labelled_video(dataset: str | Path, labels: str | Path, image_key: str, embodiment: str | None):
    """The video dataset in memory with its latent-action codes as the `codes` column (F, N)."""
    labels = Path(labels)
    if not labels.is_file():
        raise FileNotFoundError(
            f"no latent-action labels at {labels}; write them with "
            f"`python -m world_model.label_lam label.dataset={dataset} label.out={labels}`"
        )
    label = load_file(labels)
    bank = EpisodeBank.load(dataset, image_key, columns=["embodiment"] if embodiment else [])
    if not torch.equal(label["episode_index"], bank.episode_index):
        raise ValueError(f"labels {labels} do not match the frames of {dataset} (was it regenerated?)")
    bank.columns["codes"] = label["codes"]
    if embodiment is not None:
        if embodiment not in EMBODIMENTS:
            raise ValueError(f"embodiment must be one of {list(EMBODIMENTS)} or null, got {embodiment!r}")
        keep = bank.columns["embodiment"].flatten() == EMBODIMENTS[embodiment]
        bank = bank.subset(torch.unique(bank.episode_index[keep]).tolist())
    return bank, int(label["codebook"].shape[0]), int(label["codes"].shape[1])


def make_batch(
    bank: EpisodeBank,
    rows: torch.Tensor,
    horizon: int,
    vocab: int,
    shift: int,
    offsets: torch.Tensor | None = None,
):
    """Rows of frames t -> (frames (B, 2, 3, H, W), words, future (B, 3, H, W), codes (B, H, N)).
    `offsets` (2, B) are the random shifts (`data.clips.shift_offsets`)."""
    w = bank.window(rows, horizon)
    frames = torch.cat([bank.frames[w.context], bank.frames[w.future][:, None]], dim=1).float() / 255
    frames = random_shift(frames, shift, offsets=offsets)
    codes = bank.columns["codes"][w.chunk].masked_fill(w.chunk_is_pad[..., None], -1)
    words = tokenize([bank.tasks[i] for i in rows.tolist()], vocab)
    return frames[:, :2], words, frames[:, 2], codes


# ---------------------------------------------------------------------------------------------- eval
@torch.no_grad()
def evaluate(model: VideoBackbone, bank: EpisodeBank, majority_code: int, num: int = 256) -> dict:
    model.eval()
    cfg = model.cfg
    rows = torch.linspace(0, len(bank) - 1, min(num, len(bank))).round().long()
    device = next(model.parameters()).device
    batch = make_batch(bank, rows, cfg.horizon, cfg.vocab_size, shift=0)
    frames, words, future, codes = (t.to(device) for t in batch)
    out = model(frames, words)
    valid = codes >= 0
    model.train()
    return {
        "frame_mse": torch.mean((out.frame.clamp(0, 1) - future) ** 2).item(),
        "copy_mse": torch.mean((frames[:, 1] - future) ** 2).item(),
        "action_acc": (out.logits.argmax(-1)[valid] == codes[valid]).float().mean().item(),
        "majority_acc": (codes[valid] == majority_code).float().mean().item(),
    }


# ---------------------------------------------------------------------------------------------- training
def train(cfg: DictConfig) -> dict:
    tcfg = cfg.train.backbone
    out_dir = Path(tcfg.out_dir)
    accelerator = make_accelerator(tcfg)
    seed_process(tcfg.seed, accelerator)
    log = print if accelerator.is_main_process else lambda *a, **k: None
    bank, num_codes, tokens = load_labelled_video(
        tcfg.dataset, tcfg.labels, cfg.task.image_key, tcfg.embodiment
    )
    model_cfg = BackboneConfig(
        **OmegaConf.to_container(cfg.model.backbone, resolve=True),
        num_codes=num_codes,
        tokens_per_step=tokens,
    )
    if model_cfg.image_size != bank.frames.shape[-1]:
        raise ValueError(
            f"{cfg.task.image_key!r} in {tcfg.dataset} is {bank.frames.shape[-1]} pixels wide, the backbone "
            f"takes {model_cfg.image_size}"
        )
    device = accelerator.device
    model = VideoBackbone(model_cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    gen = torch.Generator().manual_seed(tcfg.seed)
    train_eps, val_eps = split_episodes(len(bank.episodes), tcfg.val_fraction, tcfg.seed)
    all_eps = bank.episodes
    train_bank, val_bank = (
        bank.subset([all_eps[i] for i in train_eps]),
        bank.subset([all_eps[i] for i in val_eps]),
    )
    labelled = train_bank.columns["codes"][train_bank.columns["codes"] >= 0]
    majority = int(torch.bincount(labelled, minlength=num_codes).argmax())

    start, modules = 0, {"model": model}
    restore_on_main(out_dir, accelerator)
    if tcfg.resume and has_checkpoint(out_dir):
        hint = "use another train.backbone.out_dir or set train.backbone.resume=false"
        start = load_checkpoint(out_dir, modules, optimizer, gen, model_cfg.to_dict(), hint)["step"]
        log(f"resuming from {out_dir / CKPT_DIR} at step {start}")
        seed_process(tcfg.seed, accelerator, start)
    check_same_start(start, accelerator)
    is_main = accelerator.is_main_process
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    meta = {"model_config": model_cfg.to_dict(), "dataset": str(tcfg.dataset), "embodiment": tcfg.embodiment}
    log(
        f"backbone: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; "
        f"{len(train_bank)} training frames ({len(train_bank.episodes)} episodes), {len(val_bank)} held out; "
        f"{accelerator.num_processes} process(es) x {tcfg.grad_accum} micro-batch(es) per step"
    )
    writer = SummaryWriter(str(out_dir / "tb"), purge_step=start) if is_main else None
    if tcfg.compile:
        model.compile()  # in place: state_dict keys and checkpoints are unchanged
    parallel = accelerator.prepare_model(model)  # DDP (and autocast) when launched on several processes
    clock = time.perf_counter()
    steps = range(start, tcfg.steps)
    progress = tqdm(steps, initial=start, total=tcfg.steps, desc="backbone", unit="step", disable=not is_main)
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, tcfg)
        rows = torch.randint(len(train_bank), (tcfg.batch_size,), generator=gen)  # the global batch
        offsets = shift_offsets(len(rows), tcfg.shift, gen)
        optimizer.zero_grad(set_to_none=True)
        for mine in accumulation(accelerator, parallel, shard_rows(rows, accelerator, tcfg.grad_accum)):
            batch = make_batch(
                train_bank, rows[mine], model_cfg.horizon, model_cfg.vocab_size, tcfg.shift, offsets[:, mine]
            )
            frames, words, future, codes = (t.to(device) for t in batch)
            loss, terms = backbone_loss(
                parallel(frames, words), future, codes, tcfg.loss.frame, tcfg.loss.action
            )
            if not finite_everywhere(loss, accelerator):
                raise FloatingPointError(
                    f"loss is {loss.item()} at step {step}; the last good checkpoint in {out_dir / CKPT_DIR} is kept"
                )
            accelerator.backward(loss / tcfg.grad_accum)
        accelerator.clip_grad_norm_(parallel.parameters(), tcfg.grad_clip)
        optimizer.step()
        if (step + 1) % tcfg.log_every == 0 and is_main:
            for k, v in terms.items():
                writer.add_scalar(f"train/{k}", v.item(), step + 1)
            progress.set_postfix(
                mse=f"{terms['frame_mse'].item():.4f}", acc=f"{terms['action_acc'].item():.2f}"
            )
        if ((step + 1) % tcfg.val_every == 0 or step + 1 == tcfg.steps) and is_main:
            for k, v in evaluate(model, val_bank, majority).items():
                writer.add_scalar(f"val/{k}", v, step + 1)
        if (step + 1) % tcfg.ckpt_every == 0 or step + 1 == tcfg.steps:
            if is_main:
                save_checkpoint(out_dir, modules, optimizer, step + 1, gen, meta)
            accelerator.wait_for_everyone()
    progress.close()
    summary = {"steps": tcfg.steps, "resumed_at": start, "minutes": (time.perf_counter() - clock) / 60}
    summary |= {"processes": accelerator.num_processes, "grad_accum": tcfg.grad_accum}
    if is_main:
        writer.close()
        summary |= evaluate(model, val_bank, majority)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    accelerator.wait_for_everyone()
    return summary


def load_backbone(path: str | Path) -> VideoBackbone:
    """A pretrained backbone from a run folder or its checkpoint folder, in eval mode."""
    modules, _ = load_trained(
        path, "backbone", lambda config: {"model": VideoBackbone(BackboneConfig(**config))}
    )
    return modules["model"]


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    summary = train(cfg)
    if not is_main_process():
        return
    print(json.dumps(summary, indent=1))
    print(f"checkpoint: {Path(cfg.train.backbone.out_dir) / CKPT_DIR}")
    print("command: python -m world_model.train_backbone " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
