"""Training throughput of the latent action model's profiles on random clips (no dataset needed).

    python -m world_model.throughput --profile cpu                      # this machine
    python -m world_model.throughput --profile gpu --device cuda --out reports/bench/lam_gpu.json

Times full training steps (model, flow estimator, quantizer, SSIM; the DIS flow targets, computed on the
CPU by OpenCV, are left out) after a few warm-up steps, and reports samples/s and peak accelerator
memory. Reads the profile from conf/model/lam/<profile>.yaml and conf/train/lam/<profile>.yaml with
PyYAML only, so it runs where Hydra and lerobot are not installed.
"""

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from world_model.lam import LAMConfig, LatentActionModel
from world_model.losses import FlowNet, ssim

CONF = Path(__file__).resolve().parent.parent / "conf"
IMAGE_SIZE = {"cpu": 64, "gpu": 128}  # conf/task/bridge.yaml and bridge_gpu.yaml


def load_profile(name: str) -> tuple[dict, dict]:
    """The model and train yaml of a profile, with `defaults: [cpu]` merged and interpolations filled."""

    def read(kind: str, profile: str) -> dict:
        cfg = yaml.safe_load((CONF / kind / "lam" / f"{profile}.yaml").read_text())
        base = {}
        for parent in cfg.pop("defaults", []):
            if parent != "_self_":
                base |= read(kind, parent)
        return base | cfg

    model, train = read("model", name), read("train", name)
    model |= {"image_size": IMAGE_SIZE[name], "clip_len": 8}
    return model, train


def timed(fn, device: str, repeats: int, warmup: int) -> float:
    """Seconds per call of `fn` after `warmup` calls (peak accelerator memory counted from the first)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def measure(profile: str, device: str, steps: int, warmup: int) -> dict:
    model_cfg, train_cfg = load_profile(profile)
    torch.manual_seed(0)
    model = LatentActionModel(LAMConfig(**model_cfg)).to(device)
    flow_net = FlowNet().to(device)
    params = list(model.parameters()) + list(flow_net.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    B, size = train_cfg["batch_size"], model_cfg["image_size"]
    clips = torch.rand(B, 8, 3, size, size, device=device)

    def step():
        out = model(clips)
        real = clips[:, 1:]
        flow = flow_net(clips[:, 0], real[:, 0])
        loss = (
            (out.predicted - real).pow(2).mean()
            + (1 - ssim(out.predicted[:, 0], real[:, 0]))
            + flow.abs().mean()
        )
        loss = loss + (flow_net.frozen(clips[:, 0], out.predicted[:, 0]) - flow.detach()).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = steps * timed(step, device, steps, warmup)
    result = {
        "profile": profile,
        "device": torch.cuda.get_device_name()
        if device.startswith("cuda")
        else f"cpu ({torch.get_num_threads()} threads)",
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "batch_size": B,
        "image_size": size,
        "steps_timed": steps,
        "samples_per_s": steps * B / seconds,
        "step_ms": 1000 * seconds / steps,
    }
    if device.startswith("cuda"):
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def write_report(result: dict, out: Path | None) -> str:
    """The result as JSON text, also written to `out` (through a temporary file) when given."""
    text = json.dumps(result, indent=1)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text + "\n")
        tmp.replace(out)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = measure(args.profile, args.device, args.steps, args.warmup)
    print(write_report(result, args.out))


if __name__ == "__main__":
    main()
