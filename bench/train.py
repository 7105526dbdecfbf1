"""Training throughput and model FLOPs utilisation of the trained models (make bench-gpu).

    python -m bench.train experiment=full_gpu bench_train.device=cuda     # -> reports/bench/train_cuda.json
    python -m bench.train bench_train.device=cpu bench_train.precisions=[fp32] bench_train.compile=[false]

For each model (latent action model, backbone, policy, neural simulator) at the sizes of the composed
config, and each precision x torch.compile setting: full training steps (the loss the trainer runs, its
backward, AdamW) on random inputs of the configured batch size, timed after a warm-up. FLOPs per step are counted once with torch's
FlopCounterMode (matmuls, convolutions and attention, forward and backward); MFU is achieved FLOP/s
over the device's dense peak at that precision, where the device is in PEAK_TFLOPS. The LAM's step
includes its DIS flow targets (OpenCV, on the CPU), as in training. Without a CUDA device, `bench_train.device=cuda` prints why
it is skipped and exits 0, leaving any earlier report alone.
"""

import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
import numpy as np
import torch
from lerobot.configs import FeatureType, PolicyFeature
from omegaconf import DictConfig, OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from bench.common import stamp, time_calls, write_report
from policies.vipra import VipraConfig, VipraPolicy
from policies.vipra.configuration_vipra import ACTION_KEY, STATE_KEY
from policies.vipra.modeling_vipra import WAYPOINT_KEY, WAYPOINT_PAD_KEY
from world_model.backbone.model import BackboneConfig, VideoBackbone, tokenize
from world_model.backbone.train import Objective as BackboneObjective
from world_model.lam.losses import FlowNet
from world_model.lam.model import LAMConfig, LatentActionModel
from world_model.lam.train import Objective as LAMObjective
from world_model.neural_sim.dynamics import ACTION, WORLD
from world_model.neural_sim.model import ACTION_DIM, WORLD_DIM, NeuralSimConfig, build_modules
from world_model.neural_sim.train import Objective as NeuralSimObjective
from world_model.neural_sim.train import Sequence

# Dense peak TFLOP/s (no sparsity) per precision; fp32 is without TF32, PyTorch's default for matmuls.
PEAK_TFLOPS = {
    "H100 80GB HBM3": {"bf16": 989.4, "fp32": 66.9},  # SXM
    "H100 PCIe": {"bf16": 756.0, "fp32": 51.2},
    "H200": {"bf16": 989.4, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp32": 19.5},
}
STATE_DIM = 7

Step = Callable[[], torch.Tensor]  # one forward pass -> the loss


def lam_step(cfg: DictConfig, device: torch.device) -> tuple[torch.nn.Module, Step, int]:
    """The LAM's training loss (world_model.lam.train.Objective, DIS flow targets included: OpenCV on the
    CPU), every term switched on (the step is past every warm-up)."""
    model_cfg = LAMConfig(**OmegaConf.to_container(cfg.model.lam, resolve=True))
    objective = LAMObjective(LatentActionModel(model_cfg), FlowNet(), cfg.train.lam.loss).to(device)
    B, size = cfg.train.lam.batch_size, model_cfg.image_size
    clips = torch.rand(B, model_cfg.clip_len, 3, size, size, device=device)
    transitions = torch.randint(model_cfg.clip_len - 1, (B,), device=device)
    late = 10 * cfg.train.lam.steps
    return objective, lambda: objective(clips, late, transitions)[0], B


def backbone_config(cfg: DictConfig) -> dict:
    """The backbone of the composed config, predicting the latent action model's codes."""
    lam = cfg.model.lam
    codes = {"num_codes": lam.num_codes, "tokens_per_step": lam.tokens_per_step}
    return OmegaConf.to_container(cfg.model.backbone, resolve=True) | codes


def backbone_step(cfg: DictConfig, device: torch.device) -> tuple[torch.nn.Module, Step, int]:
    """The backbone's training loss (world_model.backbone.train.Objective) on random frames and codes."""
    model_cfg = BackboneConfig(**backbone_config(cfg))
    objective = BackboneObjective(VideoBackbone(model_cfg), cfg.train.backbone.loss).to(device)
    B, size, H, N = (
        cfg.train.backbone.batch_size,
        model_cfg.image_size,
        model_cfg.horizon,
        model_cfg.tokens_per_step,
    )
    frames = torch.rand(B, 2, 3, size, size, device=device)
    future = torch.rand(B, 3, size, size, device=device)
    words = tokenize(["put the carrot on the plate"] * B, model_cfg.vocab_size).to(device)
    codes = torch.randint(model_cfg.num_codes, (B, H, N), device=device)
    return objective, lambda: objective(frames, words, future, codes)[0], B


def neural_sim_step(cfg: DictConfig, device: torch.device) -> tuple[torch.nn.Module, Step, int]:
    """The neural simulator's video phase (world_model.neural_sim.train.Objective, "frames": the video
    model and the probe over `unroll` frames, drawn from the last ones or, by a renderer, from the first),
    on random frames and states."""
    model_cfg = NeuralSimConfig(**OmegaConf.to_container(cfg.model.neural_sim, resolve=True))
    tcfg = cfg.train.neural_sim
    objective = NeuralSimObjective(build_modules(model_cfg), tcfg.loss).to(device)
    B, K, S = tcfg.batch_size, tcfg.unroll, model_cfg.image_size
    unit = {"mean": [0.0] * WORLD_DIM, "std": [1.0] * WORLD_DIM}
    stats = {WORLD: unit, ACTION: {"mean": [0.0] * ACTION_DIM, "std": [1.0] * ACTION_DIM}}
    seq = Sequence(
        world=torch.randn(B, K + 1, WORLD_DIM, device=device),
        action=torch.randn(B, K, ACTION_DIM, device=device),
        last_action=torch.randn(B, ACTION_DIM, device=device),
        success=torch.zeros(B, K + 1, device=device),
        grasp=torch.zeros(B, K + 1, device=device),
        frames=torch.rand(B, K + 2, 3, S, S, device=device),
        first_frame=torch.rand(B, 3, S, S, device=device),
        first_world=torch.randn(B, WORLD_DIM, device=device),
    )
    return objective, lambda: objective(seq, "frames", stats)[0], B


def policy_step(cfg: DictConfig, device: torch.device) -> tuple[torch.nn.Module, Step, int]:
    pcfg = OmegaConf.to_container(cfg.model.policy, resolve=True)
    pcfg.pop("backbone_scratch")
    if pcfg.get("waypoint_weight", 0) > 0 and pcfg.pop("waypoint_on_table", True):
        # the table tokens' cost: the task's camera, the event heights of a grasp (m) (train_policy reads
        # them from the demos)
        pcfg["camera_calibration"] = OmegaConf.to_container(cfg.task.camera, resolve=True)
        pcfg["waypoint_heights"] = [0.03, 0.08]
    pcfg.pop("waypoint_on_table", None)
    backbone = backbone_config(cfg)
    size = backbone["image_size"]
    features = {
        "input_features": {
            cfg.task.image_key: PolicyFeature(FeatureType.VISUAL, (3, size, size)),
            STATE_KEY: PolicyFeature(FeatureType.STATE, (STATE_DIM,)),
        },
        "output_features": {ACTION_KEY: PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
    }
    config = VipraConfig(**pcfg, **features, backbone=backbone, device=str(device))
    policy = VipraPolicy(config).to(device).train()  # the batch below stands for a normalized one
    B, H = cfg.train.policy.batch_size, config.chunk_size
    batch = {
        cfg.task.image_key: torch.rand(B, 2, 3, size, size, device=device),
        STATE_KEY: torch.randn(B, STATE_DIM, device=device),
        ACTION_KEY: torch.randn(B, H, ACTION_DIM, device=device),
        "action_is_pad": torch.zeros(B, H, dtype=torch.bool, device=device),
        "task": ["put the carrot on the plate"] * B,
    }
    if config.waypoint_weight > 0:
        batch[WAYPOINT_KEY] = torch.rand(B, 2, 2, device=device) * 2 - 1
        batch[WAYPOINT_PAD_KEY] = torch.zeros(B, 2, dtype=torch.bool, device=device)
    return policy, lambda: policy(batch)[0], B


MODELS = {"lam": lam_step, "backbone": backbone_step, "policy": policy_step, "neural_sim": neural_sim_step}


def flops_per_step(step: Step) -> int:
    """Forward + backward FLOPs of one training step, counted by torch."""
    with FlopCounterMode(display=False) as counter:
        step().backward()
    return counter.get_total_flops()


def time_steps(model: torch.nn.Module, step: Step, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per full training step (forward, backward, AdamW)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def one():
        optimizer.zero_grad(set_to_none=True)
        step().backward()
        optimizer.step()

    return float(np.mean(time_calls(one, steps, warmup, device)))


def measure(name: str, cfg: DictConfig, device: torch.device, precision: str, compiled: bool) -> dict:
    bcfg = cfg.bench_train
    torch.manual_seed(0)
    model, step, batch_size = MODELS[name](cfg, device)
    flops = flops_per_step(step)
    if compiled:  # in place: the step closures call the compiled module
        model.compile()
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with autocast:
        seconds = time_steps(model, step, bcfg.steps, bcfg.warmup, device)
    result = {
        "model": name,
        "precision": precision,
        "compile": compiled,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "batch_size": batch_size,
        "step_ms": 1000 * seconds,
        "samples_per_s": batch_size / seconds,
        "gflops_per_step": flops / 1e9,
        "achieved_tflops": flops / seconds / 1e12,
    }
    peak = peak_tflops(device, precision)
    result["mfu"] = result["achieved_tflops"] / peak if peak else None
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def peak_tflops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((p[precision] for key, p in PEAK_TFLOPS.items() if key in name), None)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def run(cfg: DictConfig) -> dict | None:
    bcfg = cfg.bench_train
    device = torch.device(bcfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_train skipped: no CUDA device is visible (bench_train.device=cpu measures this machine)")
        return None
    if "bf16" in bcfg.precisions and device.type != "cuda":
        raise ValueError(
            "bench_train.precisions has bf16, which is measured on GPU only; use [fp32] on the CPU"
        )
    rows = []
    for name in bcfg.models:
        for precision in bcfg.precisions:
            for compiled in bcfg.compile:
                try:
                    rows.append(measure(name, cfg, device, precision, compiled))
                except Exception as err:  # noqa: BLE001 - e.g. a compiler missing: record it, go on
                    rows.append(
                        {"model": name, "precision": precision, "compile": compiled, "error": repr(err)[:500]}
                    )
                print(json.dumps(rows[-1]))
    return {
        "device": device_name(device),
        "image_size": cfg.task.image_size,
        "steps_timed": bcfg.steps,
        "rows": rows,
    } | stamp("python -m bench.train " + " ".join(sys.argv[1:]))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    report = run(cfg)
    if report is None:
        return
    out = Path(cfg.bench_train.out)
    write_report(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
