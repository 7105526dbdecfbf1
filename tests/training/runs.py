"""Tiny CPU runs of every model the shared trainer trains, composed from the root config: the same
overrides for the loss-equality check and the robustness tests."""

from pathlib import Path
from types import SimpleNamespace

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONF = str(Path(__file__).resolve().parents[2] / "conf")
MODELS = ["lam", "backbone", "policy", "state_fm", "neural_sim"]
TRAIN_KEY = {
    "lam": "lam",
    "backbone": "backbone",
    "policy": "policy",
    "state_fm": "policy",
    "neural_sim": "neural_sim",
}

COMMON = ["task.tasks=[stack_block,carrot_on_plate]", "data.video.name=video", "data.demos.name=demos"]
TINY_LAM = ["model.lam.dim=16", "model.lam.heads=2", "model.lam.idm_layers=1", "model.lam.fdm_layers=1",
            "train.lam.batch_size=2", "train.lam.val_clips=4", "train.lam.val_fraction=0.2",
            "train.lam.lr_warmup=5", "train.lam.dead_codes.every=4", "train.lam.loss.l1.start=5",
            "train.lam.loss.ssim.start=5", "train.lam.loss.flow.start=8", "train.lam.loss.flow.warmup=4"]  # fmt: skip
TINY_BACKBONE = ["model.backbone.dim=32", "model.backbone.heads=2", "model.backbone.layers=1",
                 "model.backbone.horizon=6", "train.backbone.batch_size=4", "train.backbone.val_fraction=0.2",
                 "train.backbone.lr_warmup=5"]  # fmt: skip
TINY_POLICY = ["model.policy.chunk_size=6", "model.policy.n_action_steps=3", "model.policy.dim=32",
               "model.policy.heads=2", "model.policy.layers=1", "train.policy.batch_size=4",
               "model.policy.scheduler_warmup_steps=5"]  # fmt: skip
STATE_FM = ["experiment=ceiling", "train.policy.batch_size=8", "train.policy.ema.decay=0.9"]
# warp: the video model the recorded losses (test_same_losses) were trained with
TINY_NEURAL_SIM = ["task.image_size=32", "model.neural_sim.width=8", "model.neural_sim.levels=2",
                   "model.neural_sim.blocks=1", "model.neural_sim.cond_dim=16", "model.neural_sim.probe_width=8",
                   "model.neural_sim.state_width=16", "model.neural_sim.state_layers=1",
                   "train.neural_sim.state_batch=8", "train.neural_sim.state_unroll=3",
                   "train.neural_sim.batch_size=2", "train.neural_sim.unroll=2", "train.neural_sim.lr_warmup=3",
                   "train.neural_sim.val_fraction=0.34", "train.neural_sim.val_every=100",
                   "model.neural_sim.video=warp"]  # fmt: skip


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=CONF):
        return compose("config", overrides=overrides)


def train_function(model: str):
    if model == "lam":
        from world_model.lam.train import train
    elif model == "backbone":
        from world_model.backbone.train import train
    elif model in ("policy", "state_fm"):
        from policies.train_policy import train
    else:
        from world_model.neural_sim.train import train
    return train


def record_losses(train, cfg) -> list[float]:
    """Run `train(cfg)` and return the loss of every backward pass, in order."""
    losses, real_backward = [], torch.Tensor.backward

    def backward(self, *args, **kwargs):
        losses.append(self.item())
        return real_backward(self, *args, **kwargs)

    torch.Tensor.backward = backward
    try:
        train(cfg)
    finally:
        torch.Tensor.backward = real_backward
    return losses


def overrides(model: str, inputs: SimpleNamespace, out_dir: Path, steps: int) -> list[str]:
    """A run of `model` for `steps` steps into `out_dir`; the neural simulator's first 3 are its state phase."""
    key = TRAIN_KEY[model]
    base = [*COMMON, f"data.root={inputs.root}", f"train.{key}.out_dir={out_dir}"]
    if model == "lam":
        return [*base, *TINY_LAM, f"train.lam.steps={steps}"]
    if model == "backbone":
        return [
            *base,
            *TINY_BACKBONE,
            f"train.backbone.labels={inputs.labels}",
            f"train.backbone.steps={steps}",
        ]
    if model in ("policy", "state_fm"):
        backbone = (
            f"train.policy.backbone={inputs.backbone}"
            if inputs.backbone and model == "policy"
            else "train.policy.backbone=null"
        )
        extra = STATE_FM if model == "state_fm" else []
        return [*base, *TINY_BACKBONE, *TINY_POLICY, backbone, f"train.policy.steps={steps}", *extra]
    state_steps = getattr(inputs, "state_steps", 3)
    return [*base, *TINY_NEURAL_SIM, f"train.neural_sim.dataset={inputs.rollouts}",
            f"train.neural_sim.state_steps={state_steps}", f"train.neural_sim.steps={steps - state_steps}"]  # fmt: skip


def make_labels(root: Path, work: Path, lam_dir: Path | None = None) -> Path:
    """Latent-action labels of the fixture video from the LAM in `lam_dir` (default: a tiny one trained
    for 2 steps)."""
    from world_model.lam.label import label_dataset, write_labels
    from world_model.lam.model import load_lam

    if lam_dir is None:
        lam_dir = work / "lam_for_labels"
        train_function("lam")(compose_cfg(overrides("lam", SimpleNamespace(root=root), lam_dir, 2)))
    lam = load_lam(lam_dir)
    labels = work / "labels.safetensors"
    write_labels(label_dataset(lam, root / "video", "observation.images.image"), lam, labels, {})
    return labels


def make_rollouts(root: Path) -> Path:
    """Three rollouts of one task at 32x32 (an expert's and random ones) for the neural simulator."""
    from data.generate import close_envs
    from data.generate_rollouts import generate_rollouts

    task = OmegaConf.create({"tasks": ["stack_block"], "image_size": 32, "fps": 5})
    kinds = [{"name": "expert", "policy": "expert", "noise": 0.005, "weight": 1},
             {"name": "random", "policy": "random", "weight": 1}]  # fmt: skip
    rollouts = OmegaConf.create({"episodes": 3, "protocol": "visual_matching", "seed": 5, "kinds": kinds})
    try:
        generate_rollouts(rollouts, task, root / "rollouts")
    finally:
        close_envs()
    return root / "rollouts"
