"""Data-parallel training on existing engines, shared by the training entry points.

    torchrun --nproc_per_node 2 -m world_model.backbone.train train.backbone.batch_size=64
    accelerate launch --num_processes 8 -m policies.train_policy train/policy=gpu train.policy.precision=bf16

One `accelerate.Accelerator` per job: the launcher starts the processes, Accelerate wraps the model in
DDP (gloo on CPU, NCCL on GPU) and autocasts to bf16 on GPU. A job's `batch_size` is the *global*
batch: every process draws the same rows from the shared batch generator and keeps its own slice of
each of `grad_accum` micro-batches, so N processes x K micro-batches see exactly the rows one process
would, and their averaged gradients are the full batch's (checked against one process in
tests/policies/test_pipeline.py).
A loss averaged over a mask (codes past an episode's end, padded actions) is averaged per micro-batch
first, as in any DDP job. Only the main process logs, evaluates and writes checkpoints.
"""

import contextlib
from collections.abc import Iterator

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState
from omegaconf import DictConfig

from world_model.training.checkpoint import restore_interrupted_swap

PRECISIONS = {"fp32": "no", "bf16": "bf16"}


def make_accelerator(tcfg: DictConfig) -> Accelerator:
    """The job's Accelerator from `device` and `precision` (fp32 | bf16) in its train config."""
    precision = tcfg.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {sorted(PRECISIONS)}")
    on_cpu = str(tcfg.device) == "cpu"
    if precision == "bf16" and on_cpu:
        raise ValueError("precision=bf16 needs device=cuda (bf16 autocast is only used on GPU here)")
    if not on_cpu and not torch.cuda.is_available():
        raise RuntimeError(f"device={tcfg.device!r} but no CUDA device is visible; use device=cpu")
    # Unused parameters are allowed: ablations switch loss terms (and the heads behind them) off.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(cpu=on_cpu, mixed_precision=PRECISIONS[precision], kwargs_handlers=[ddp])


def shard_rows(rows: torch.Tensor, accelerator: Accelerator, grad_accum: int) -> list[torch.Tensor]:
    """This process's share of a global batch: one index tensor per micro-batch.

    rows (B,) -> grad_accum tensors of B / (grad_accum x processes) positions into `rows`."""
    world, rank = accelerator.num_processes, accelerator.process_index
    parts = grad_accum * world
    if grad_accum < 1 or len(rows) % parts:
        raise ValueError(
            f"batch_size={len(rows)} must split evenly into grad_accum={grad_accum} micro-batches "
            f"x {world} processes; use a batch_size divisible by {parts}"
        )
    positions = torch.arange(len(rows)).view(grad_accum, world, -1)  # (K, N, B / (K N))
    return list(positions[:, rank])


def accumulation(accelerator: Accelerator, model, micro_batches: list) -> Iterator:
    """Yield each micro-batch inside the right context: gradients are all-reduced on the last one only."""
    for i, micro in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            yield micro


def seed_process(seed: int, accelerator: Accelerator, step: int = 0) -> None:
    """Per-process torch RNG (noise, dropout) so processes do not draw the same noise. A one-process run
    keeps `seed` (and, on resume, the restored RNG state: call this only at the start then); several
    processes reseed from (seed, rank, step) after a resume, since a checkpoint holds rank 0's state only."""
    if step == 0 or accelerator.num_processes > 1:
        torch.manual_seed(seed + accelerator.process_index + accelerator.num_processes * step)


def restore_on_main(out_dir, accelerator: Accelerator) -> None:
    """Undo a checkpoint swap a killed run left (a rename) on the main process only, then let the others on."""
    if accelerator.is_main_process:
        restore_interrupted_swap(out_dir)
    accelerator.wait_for_everyone()


def check_same_start(start: int, accelerator: Accelerator) -> None:
    """Every process must resume from the same step, or their loops would pair all-reduces wrongly."""
    if accelerator.num_processes == 1:
        return
    starts = accelerator.gather(torch.tensor([start], device=accelerator.device)).tolist()
    if len(set(starts)) > 1:
        raise RuntimeError(
            f"processes would resume from different steps {starts}: out_dir must be on a filesystem every "
            "process sees (only the main process writes checkpoints)"
        )


def finite_everywhere(loss: torch.Tensor, accelerator: Accelerator) -> bool:
    """Whether the loss is finite on every process, so they all stop together instead of hanging in the
    next all-reduce."""
    bad = (~torch.isfinite(loss.detach())).float().reshape(1)
    return accelerator.reduce(bad, reduction="sum").item() == 0


@torch.no_grad()
def broadcast_from_main(module: torch.nn.Module, accelerator: Accelerator) -> None:
    """Copy the main process's parameters and buffers of `module` to the others: for state changed outside
    the optimizer (a codebook initialised from data or re-seeded), which would otherwise drift apart."""
    if accelerator.num_processes == 1:
        return
    for tensor in module.state_dict().values():
        torch.distributed.broadcast(tensor, src=0)


def is_main_process() -> bool:
    """Whether this is the process that prints and writes (true without a launcher)."""
    return PartialState().is_main_process
