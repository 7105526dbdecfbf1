"""The one training loop: every model the project trains runs its gradient steps here.

    summary = Trainer(cfg.train.lam, "lam").fit(lambda device: LAMTask(cfg, device))

The trainer owns what every job shares: the accelerator (DDP, accumulation, bf16 on GPU), seeding,
resume, the NaN guard, the learning-rate schedule, gradient clipping, the weight average (EMA, off
unless `ema.decay` is set), the logging / validation / checkpoint cadence, tqdm and TensorBoard, and
the run summary. A model supplies a `TrainTask`: its modules, how to draw a batch, its loss (the
`objective` module, whose forward returns `(loss, terms)`), its evaluation and an `after_step` hook.

Keys read from the train config (`cfg.train.<name>`): out_dir, resume, seed, device, precision,
grad_accum, compile, threads, steps, lr_warmup, grad_clip, log_every, val_every, ckpt_every, ema
(a task may bring its own optimizer, schedule and clip instead: the policy takes its config's presets).
"""

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from sim.reporting import write_atomic
from world_model.training.checkpoint import CKPT_DIR, has_checkpoint, load_checkpoint, save_checkpoint
from world_model.training.distributed import (
    accumulation,
    check_same_start,
    finite_everywhere,
    is_main_process,
    make_accelerator,
    restore_on_main,
    seed_process,
    shard_rows,
)
from world_model.training.ema import WeightAverage
from world_model.training.schedule import warmup_cosine

EMA_MODULE = "ema"


class TrainTask:
    """What one model brings to the trainer. Subclasses set the attributes in `__init__(cfg, device)`,
    which the trainer calls after seeding (so initial weights follow the seed), and override the hooks
    they need."""

    modules: dict[str, nn.Module]  # checkpointed, one safetensors file per name
    model: nn.Module  # what the weight average follows and torch.compile compiles
    objective: nn.Module  # forward(*micro_batch) -> (loss, terms); the module DDP wraps
    model_config: dict  # checked on resume: another config is refused
    meta: dict | None = None  # kept in the checkpoint's state.json beside model_config
    lr: float  # the base rate of the optimizer's groups without their own
    weight_decay: float = 0.0
    lr_floor: float = 0.1  # the cosine ends at this fraction of the rate
    grad_clip: float | None = None  # gradient norm clip; None: the train config's grad_clip
    progress_keys: tuple[str, ...] = ()  # terms shown on the progress bar

    def param_groups(self) -> list:
        """The optimizer's parameters or parameter groups (AdamW)."""
        return list(self.objective.parameters())

    def make_optimizer(self, groups: list) -> torch.optim.Optimizer:
        return torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)

    def total_steps(self, tcfg: DictConfig) -> int:
        return tcfg.steps

    def lr_factor(self, step: int, tcfg: DictConfig) -> float:
        return warmup_cosine(step, self.total_steps(tcfg), tcfg.lr_warmup, self.lr_floor)

    def milestones(self, tcfg: DictConfig) -> set[int]:
        """Steps after which the trainer validates and checkpoints whatever the cadence (phase ends)."""
        return {self.total_steps(tcfg)}

    def batch_size(self, step: int) -> int:
        return self.tcfg.batch_size  # tasks keep their train config as self.tcfg

    def draw(self, step: int, gen: torch.Generator, size: int):
        """The global batch's random choices, drawn from `gen` only (the same on every process)."""
        raise NotImplementedError

    def micro_batch(self, draw, positions: torch.Tensor, step: int) -> tuple:
        """The objective's arguments for the rows of `draw` at `positions` (this process's share), on the device."""
        raise NotImplementedError

    def check_micro_batch(self, rows: int) -> None:
        """Refuse micro-batches too small for the loss (called once before training)."""

    def after_step(self, step: int, trainer: "Trainer") -> dict[str, float]:
        """Runs on every process after the optimizer step; returns scalars to log now."""
        return {}

    def on_resume(self, meta: dict) -> None:
        """Take what the loss needs from the checkpoint's state.json (e.g. its statistics)."""

    def validate(self, step: int, model: nn.Module) -> dict[str, float]:
        """Held-out metrics after `step` steps of `model` (the weight average when there is one: what
        inference loads), on the main process."""
        return {}

    def summary(self, last_terms: dict, model: nn.Module) -> dict:
        """The run summary's model-specific part, after training (main process only)."""
        return {}

    def export(self, out_dir: Path, model: nn.Module) -> None:
        """Write the trained model for inference, if the job does more than its checkpoint (main only).
        `model` holds the weight average when there is one."""

    def describe(self) -> str:
        """One line on the model and its data, printed at the start."""
        return ""


class Trainer:
    def __init__(self, tcfg: DictConfig, name: str, full_cfg: DictConfig | None = None):
        self.tcfg, self.name = tcfg, name
        self.full_cfg = full_cfg  # written beside the checkpoints as config.yaml
        self.out_dir = Path(tcfg.out_dir)

    def fit(self, build: Callable[[torch.device], TrainTask]) -> dict:
        """Train (or resume) the task `build(device)` makes; returns the run summary."""
        tcfg = self.tcfg
        if tcfg.get("threads"):
            torch.set_num_threads(tcfg.threads)
        self.accelerator = make_accelerator(tcfg)
        seed_process(tcfg.seed, self.accelerator)
        self.is_main = self.accelerator.is_main_process
        task = self.task = build(self.accelerator.device)  # after seeding: initial weights follow the seed
        self.optimizer = task.make_optimizer(task.param_groups())
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.gen = torch.Generator().manual_seed(tcfg.seed)  # every batch's random choices
        self.average = self.make_average(task)
        self.modules = task.modules | ({EMA_MODULE: self.average.model} if self.average else {})
        start = self.start = self.resume(self.modules, self.optimizer, self.gen, self.average)
        self.prepare()
        total = task.total_steps(tcfg)
        clock, samples, terms = time.perf_counter(), 0, {}
        progress = tqdm(
            range(start, total),
            initial=start,
            total=total,
            desc=self.name,
            unit="step",
            disable=not self.is_main,
        )
        for step in progress:
            size = task.batch_size(step)
            loss, terms, grad_norm = self.step(step, size)
            samples += size
            if self.average:
                self.average.step(task.model)
            logged = task.after_step(step, self)
            if self.is_main and ((step + 1) % tcfg.log_every == 0 or logged):
                rate = samples / (time.perf_counter() - clock)
                self.log(progress, step + 1, loss, terms, grad_norm, rate, logged)
            self.validate_and_save(step)
        progress.close()
        minutes = (time.perf_counter() - clock) / 60
        return self.finish(start, total, minutes, samples, terms)

    def prepare(self) -> None:
        """Write the run's config, open TensorBoard, compile and wrap the objective (DDP, autocast)."""
        tcfg, task = self.tcfg, self.task
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.full_cfg is not None:
                (self.out_dir / "config.yaml").write_text(OmegaConf.to_yaml(self.full_cfg, resolve=True))
            print(
                f"{task.describe()}; {self.accelerator.num_processes} process(es) x "
                f"{tcfg.get('grad_accum', 1)} micro-batch(es) per step"
            )
        self.writer = SummaryWriter(str(self.out_dir / "tb"), purge_step=self.start) if self.is_main else None
        if tcfg.get("compile"):
            task.model.compile()  # in place: state_dict keys and checkpoints are unchanged
        self.grad_accum = tcfg.get("grad_accum", 1)
        task.check_micro_batch(
            task.batch_size(self.start) // max(1, self.grad_accum * self.accelerator.num_processes)
        )
        self.parallel = self.accelerator.prepare_model(task.objective)
        self.milestones = task.milestones(tcfg)
        self.grad_clip = task.grad_clip if task.grad_clip is not None else tcfg.grad_clip

    def step(self, step: int, size: int) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """One gradient step on a global batch of `size` rows: (loss and terms of the last micro-batch,
        the gradient norm before clipping)."""
        accelerator, optimizer, task = self.accelerator, self.optimizer, self.task
        factor = task.lr_factor(step, self.tcfg)
        for group, lr in zip(optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = lr * factor
        draw = task.draw(step, self.gen, size)
        optimizer.zero_grad(set_to_none=True)
        shares = shard_rows(torch.arange(size), accelerator, self.grad_accum)
        for mine in accumulation(accelerator, self.parallel, shares):
            loss, terms = self.forward(self.parallel, task.micro_batch(draw, mine, step), step)
            if not finite_everywhere(loss, accelerator):
                raise FloatingPointError(
                    f"loss is {loss.item()} at step {step} (terms {scalars(terms)}); stopped. The last good "
                    f"checkpoint in {self.out_dir / CKPT_DIR} is kept; lower train.{self.name}.lr and resume."
                )
            accelerator.backward(loss / self.grad_accum)
        grad_norm = accelerator.clip_grad_norm_(self.parallel.parameters(), self.grad_clip)
        optimizer.step()
        return loss, terms, grad_norm

    def log(self, progress, done: int, loss, terms: dict, grad_norm, rate: float, extra: dict) -> None:
        lr = self.optimizer.param_groups[0]["lr"]
        log_scalars(self.writer, done, loss, terms, grad_norm, lr, rate, extra)
        shown = {"loss": loss} | {k: terms[k] for k in self.task.progress_keys if k in terms}
        progress.set_postfix({k: f"{v:.4f}" for k, v in scalars(shown).items()})

    def validate_and_save(self, step: int) -> None:
        """Validate (main process) and checkpoint at their cadence and at the task's milestones."""
        tcfg, done = self.tcfg, step + 1
        due = done in self.milestones
        if self.is_main and (due or (tcfg.get("val_every") and done % tcfg.val_every == 0)):
            for k, v in self.task.validate(step, self.evaluated_model()).items():
                self.writer.add_scalar(f"val/{k}", v, done)
        if due or done % tcfg.ckpt_every == 0:
            if self.is_main:
                self.evaluated_model()  # the average into modules["ema"]
                meta = self.checkpoint_meta(self.task, self.average)
                save_checkpoint(self.out_dir, self.modules, self.optimizer, done, self.gen, meta)
            self.accelerator.wait_for_everyone()

    def finish(self, start: int, total: int, minutes: float, samples: int, terms: dict) -> dict:
        """The run summary; the main process adds the task's part, exports the model, writes summary.json."""
        summary = {
            "steps": total,
            "resumed_at": start,
            "minutes": minutes,
            "samples_per_s": samples / max(60 * minutes, 1e-9),  # global samples
            "processes": self.accelerator.num_processes,
            "grad_accum": self.grad_accum,
        }
        if self.is_main:
            self.writer.close()
            summary |= self.task.summary(terms, self.evaluated_model())
            self.task.export(self.out_dir, self.evaluated_model())
            write_atomic(self.out_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
        self.accelerator.wait_for_everyone()
        return summary

    def evaluated_model(self) -> nn.Module:
        """What inference will load: the weight average (brought up to date), else the trained model."""
        return self.average.averaged(self.task.model) if self.average else self.task.model

    def forward(self, parallel: nn.Module, micro_batch: tuple, step: int) -> tuple[torch.Tensor, dict]:
        """The objective on one micro-batch: (loss, terms)."""
        return parallel(*micro_batch)

    def make_average(self, task: TrainTask) -> WeightAverage | None:
        ema = self.tcfg.get("ema") or {}
        if not ema.get("decay"):
            return None
        if not any(m is task.model for m in task.modules.values()):
            raise ValueError(
                f"train.{self.name}.ema: the weight average follows the one checkpointed module inference "
                f"loads; this model trains {list(task.modules)} together, so set ema.decay=null"
            )
        return WeightAverage(task.model, ema.decay, ema.get("power", 0.75))

    def checkpoint_meta(self, task: TrainTask, average: WeightAverage | None) -> dict:
        meta = {"model_config": task.model_config} | (task.meta or {})
        if average:
            meta["ema_of"] = next(k for k, m in task.modules.items() if m is task.model)
        return meta

    def resume(self, modules: dict, optimizer, gen: torch.Generator, average: WeightAverage | None) -> int:
        """Restore the last checkpoint in out_dir when asked to; returns the step to start from."""
        tcfg, out_dir, accelerator, start = self.tcfg, self.out_dir, self.accelerator, 0
        restore_on_main(out_dir, accelerator)
        if tcfg.resume and has_checkpoint(out_dir):
            hint = f"use another train.{self.name}.out_dir or set train.{self.name}.resume=false"
            saved = load_checkpoint(
                out_dir, modules, optimizer, gen, self.task.model_config, hint, optional={EMA_MODULE}
            )
            start = saved["step"]
            self.task.on_resume(saved)
            if average:
                if EMA_MODULE not in saved.get("loaded", []):
                    print(
                        f"{out_dir / CKPT_DIR} has no weight average: it starts from the weights at step {start}"
                    )
                    average.model.load_state_dict(self.task.model.state_dict())
                average.resume(start)
            if accelerator.is_main_process:
                print(f"resuming from {out_dir / CKPT_DIR} at step {start}")
            seed_process(tcfg.seed, accelerator, start)
        check_same_start(start, accelerator)
        return start


def print_run(summary: dict, artefact: str, path: Path, module: str) -> None:
    """What a training entry point prints when done (main process only): the summary, where the
    trained model is, and the command that made it."""
    if not is_main_process():
        return
    print(json.dumps(summary, indent=1))
    print(f"{artefact}: {path}")
    print(f"command: python -m {module} " + " ".join(sys.argv[1:]))


def millions(module: nn.Module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f}M"


def scalars(terms: dict) -> dict[str, float]:
    return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in terms.items()}


def log_scalars(writer, step, loss, terms, grad_norm, lr, samples_per_s, extra) -> None:
    """Terms named with a slash (weight/mse) are logged as named, the others under train/."""
    writer.add_scalar("train/loss", loss.item(), step)
    for k, v in scalars(terms).items():
        writer.add_scalar(k if "/" in k else f"train/{k}", v, step)
    writer.add_scalar("train/grad_norm", float(grad_norm), step)
    writer.add_scalar("train/lr", lr, step)
    writer.add_scalar("train/samples_per_s", samples_per_s, step)
    for k, v in extra.items():
        writer.add_scalar(k, v, step)
