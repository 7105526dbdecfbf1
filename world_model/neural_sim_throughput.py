"""Speed of the neural simulator's profiles with random weights (no dataset, no Hydra, no lerobot needed):
imagined env steps per second (state model, video model and judge) for batches of envs stepped together,
in fp32 and bf16, and the video model's training samples/s.

    python -m world_model.neural_sim_throughput --profile cpu                      # this machine
    python -m world_model.neural_sim_throughput --profile gpu --device cuda --out reports/bench/neural_sim_throughput_gpu_profile_h200.json

One imagined step runs the networks of NeuralTabletopEnv.step on random inputs: the state model, the
video model drawing the next frame, and the judge (the few elementwise ops around them are left out).
Frames per second = envs x steps per second.
"""

import argparse
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml

from world_model.neural_sim import (
    ACTION_DIM,
    COND_DIM,
    GEO_DIM,
    WORLD_DIM,
    NeuralSimConfig,
    build_modules,
)
from world_model.throughput import timed, write_report

CONF = Path(__file__).resolve().parent.parent / "conf"
IMAGE_SIZE = {"cpu": 64, "gpu": 128}  # conf/task/bridge.yaml and bridge_gpu.yaml


def load_profile(name: str) -> dict:
    cfg = yaml.safe_load((CONF / "model" / "neural_sim" / f"{name}.yaml").read_text())
    base = {}
    for parent in cfg.pop("defaults", []):
        if parent != "_self_":
            base |= load_profile(parent)
    return base | cfg | {"image_size": IMAGE_SIZE[name]}


def imagined_steps(
    parts: dict, cfg: NeuralSimConfig, envs: int, device: str, bf16: bool, repeats: int
) -> dict:
    S = cfg.image_size
    frames = torch.rand(2, envs, 3, S, S, device=device)
    world, actions = (
        torch.randn(envs, WORLD_DIM, device=device),
        torch.randn(envs, 2 * ACTION_DIM, device=device),
    )
    geo = torch.randn(envs, GEO_DIM, device=device)
    cast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()

    @torch.no_grad()
    def step():
        with cast:
            parts["states"](world, actions, geo)
            parts["dynamics"](frames[0], frames[1], torch.randn(envs, COND_DIM, device=device))
            parts["judge"](world, geo)

    seconds = timed(step, device, repeats, warmup=3)
    return {"envs": envs, "bf16": bf16, "step_ms": 1000 * seconds, "frames_per_s": envs / seconds}


def training_samples_per_s(parts: dict, cfg: NeuralSimConfig, batch: int, device: str, bf16: bool) -> float:
    """The video model's training step (2 autoregressive frames, L1 loss, AdamW), samples per second."""
    dynamics, S = parts["dynamics"], cfg.image_size
    optimizer = torch.optim.AdamW(dynamics.parameters(), lr=1e-4)
    frames = torch.rand(batch, 4, 3, S, S, device=device)
    cond = torch.randn(batch, 2, COND_DIM, device=device)
    cast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()

    def step():
        with cast:
            prev, frame, loss = frames[:, 0], frames[:, 1], 0.0
            for k in range(2):
                prev, frame = frame, dynamics(prev, frame, cond[:, k])
                loss = loss + (frame.float() - frames[:, k + 2]).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return batch / timed(step, device, repeats=10, warmup=3)


def measure(profile: str, device: str, envs: list[int], repeats: int, train_batch: int) -> dict:
    torch.manual_seed(0)
    cfg = NeuralSimConfig(**load_profile(profile))
    parts = {k: m.to(device) for k, m in build_modules(cfg).items()}
    precisions = [False, True] if device.startswith("cuda") else [False]  # bf16 autocast on GPUs only
    result = {
        "profile": profile,
        "device": torch.cuda.get_device_name()
        if device.startswith("cuda")
        else f"cpu ({torch.get_num_threads()} threads)",
        "image_size": cfg.image_size,
        "parameters_m": {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in parts.items()},
        "imagined": [
            imagined_steps(parts, cfg, n, device, bf16, repeats) for bf16 in precisions for n in envs
        ],
        "train_batch": train_batch,
        "train_samples_per_s": {
            "bf16" if bf16 else "fp32": training_samples_per_s(parts, cfg, train_batch, device, bf16)
            for bf16 in precisions
        },
    }
    if device.startswith("cuda"):
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 16, 256])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--train-batch", type=int, default=12)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = measure(args.profile, args.device, args.envs, args.repeats, args.train_batch)
    print(write_report(result, args.out))


if __name__ == "__main__":
    main()
