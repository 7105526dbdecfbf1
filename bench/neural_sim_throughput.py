"""Speed of the neural simulator's profiles with random weights (no dataset needed): imagined env steps
per second (state model, video model and judge) for batches of envs stepped together, in fp32 and bf16.
Its training samples/s are measured with the other models' by `python -m bench.train` (the real loss).

    python -m bench.neural_sim_throughput --profile cpu                      # this machine
    python -m bench.neural_sim_throughput --profile gpu --device cuda --out reports/bench/neural_sim_throughput_gpu_profile_h200.json

One imagined step runs the networks of NeuralTabletopEnv.step on random inputs: the state model, the
video model drawing the next frame, and the judge (the few elementwise ops around them are left out).
Frames per second = envs x steps per second.
"""

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from bench.common import compose_config, stamp, time_calls, write_report
from world_model.neural_sim.model import (
    ACTION_DIM,
    COND_DIM,
    GEO_DIM,
    WORLD_DIM,
    NeuralSimConfig,
    build_modules,
)


def load_profile(name: str) -> dict:
    """The neural simulator's model config of a profile (cpu: 64x64, gpu: 128x128), composed by Hydra."""
    overrides = ["model/neural_sim=gpu", "task=bridge_gpu"] if name == "gpu" else []
    return OmegaConf.to_container(compose_config(overrides).model.neural_sim, resolve=True)


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
            cond = torch.randn(envs, COND_DIM, device=device)
            if cfg.video == "render":  # from the first frame
                parts["dynamics"](frames[0], cond)
            else:  # from the last two
                parts["dynamics"](frames[0], frames[1], cond)
            parts["judge"](world, geo)

    seconds = float(np.mean(time_calls(step, repeats, warmup=3, device=device)))
    return {"envs": envs, "bf16": bf16, "step_ms": 1000 * seconds, "frames_per_s": envs / seconds}


def measure(profile: str, device: str, envs: list[int], repeats: int) -> dict:
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
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = measure(args.profile, args.device, args.envs, args.repeats)
    result |= stamp("python -m bench.neural_sim_throughput " + " ".join(sys.argv[1:]))
    if args.out:
        write_report(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
