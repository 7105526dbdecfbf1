"""The training loop refactor changed no number: every trainer's first 20 losses at a fixed seed, on a tiny
profile on CPU, equal those recorded before the loop was shared (`losses_before_refactor.json`, written by
the four separate loops of commit cd2dce2 with `python tests/training/test_same_losses.py`).

The losses are read where every loop hands them to autograd (`Tensor.backward`), so the check needs no
hook in the trainer it checks."""

import json
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

GOLDEN = Path(__file__).with_name("losses_before_refactor.json")
CONF = str(Path(__file__).resolve().parents[2] / "conf")
STEPS = 20
# Relative tolerance: the shared loop computes lr as base x factor where two loops wrote the formula
# out (one rounding apart), which moves later losses by ~1e-7 at most.
RTOL = 1e-6

COMMON = ["task.tasks=[stack_block,carrot_on_plate]"]
TINY_LAM = ["model.lam.dim=16", "model.lam.heads=2", "model.lam.idm_layers=1", "model.lam.fdm_layers=1",
            "train.lam.batch_size=2", "train.lam.val_clips=4", "train.lam.val_fraction=0.2",
            "train.lam.lr_warmup=5", "train.lam.dead_codes.every=4", "train.lam.loss.l1.start=5",
            "train.lam.loss.ssim.start=5", "train.lam.loss.flow.start=8", "train.lam.loss.flow.warmup=4"]  # fmt: skip
TINY_BACKBONE = ["model.backbone.dim=32", "model.backbone.heads=2", "model.backbone.layers=1",
                 "model.backbone.horizon=6", "train.backbone.batch_size=4", "train.backbone.val_fraction=0.2",
                 "train.backbone.lr_warmup=5"]  # fmt: skip
TINY_POLICY = ["model.policy.chunk_size=6", "model.policy.n_action_steps=3", "model.policy.dim=32",
               "model.policy.heads=2", "model.policy.layers=1", "train.policy.batch_size=4",
               "train.policy.lr_warmup=5"]  # fmt: skip
TINY_NEURAL_SIM = ["task.image_size=32", "model.neural_sim.width=8", "model.neural_sim.levels=2",
                   "model.neural_sim.blocks=1", "model.neural_sim.cond_dim=16", "model.neural_sim.probe_width=8",
                   "model.neural_sim.state_width=16", "model.neural_sim.state_layers=1",
                   "train.neural_sim.state_steps=10", "train.neural_sim.state_batch=8",
                   "train.neural_sim.state_unroll=3", "train.neural_sim.steps=10", "train.neural_sim.batch_size=2",
                   "train.neural_sim.unroll=2", "train.neural_sim.lr_warmup=3", "train.neural_sim.val_fraction=0.34",
                   "train.neural_sim.val_every=100"]  # fmt: skip


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=CONF):
        cfg = compose("config", overrides=overrides)
    return cfg


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


def make_rollouts(root: Path) -> Path:
    from omegaconf import OmegaConf

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


def run_every_trainer(root: Path, work: Path) -> dict[str, list[float]]:
    """The first losses of each trainer on the fixture datasets under `root` (demos, video)."""
    from policies.train_policy import train as train_policy
    from world_model.label_lam import label_dataset, write_labels
    from world_model.train_backbone import train as train_backbone
    from world_model.train_lam import load_lam
    from world_model.train_lam import train as train_lam
    from world_model.train_neural_sim import train as train_neural_sim

    base = [*COMMON, f"data.root={root}", "data.video.name=video", "data.demos.name=demos"]
    losses = {}
    lam_cfg = compose_cfg([*base, *TINY_LAM, f"train.lam.out_dir={work}/lam", f"train.lam.steps={STEPS}"])
    losses["lam"] = record_losses(train_lam, lam_cfg)
    lam = load_lam(work / "lam")
    labels = work / "labels.safetensors"
    write_labels(label_dataset(lam, root / "video", lam_cfg.task.image_key), lam, labels, {})

    backbone = [*TINY_BACKBONE, f"train.backbone.labels={labels}", f"train.backbone.steps={STEPS}"]
    bb_cfg = compose_cfg([*base, *backbone, f"train.backbone.out_dir={work}/backbone"])
    losses["backbone"] = record_losses(train_backbone, bb_cfg)

    policy = [*base, *TINY_BACKBONE, *TINY_POLICY, f"train.policy.steps={STEPS}"]
    ours = compose_cfg(
        [*policy, f"train.policy.backbone={work}/backbone", f"train.policy.out_dir={work}/ours"]
    )
    losses["policy"] = record_losses(train_policy, ours)
    scratch = [*policy, "train.policy.backbone=null", f"train.policy.out_dir={work}/scratch"]
    losses["policy_scratch"] = record_losses(train_policy, compose_cfg(scratch))
    state = [*policy, "experiment=ceiling", "train.policy.batch_size=8", "train.policy.ema.decay=0.9"]
    state_cfg = compose_cfg([*state, f"train.policy.out_dir={work}/state_fm"])
    losses["state_fm"] = record_losses(train_policy, state_cfg)

    rollouts = make_rollouts(work)
    ns = [
        *COMMON,
        *TINY_NEURAL_SIM,
        f"train.neural_sim.dataset={rollouts}",
        f"train.neural_sim.out_dir={work}/ns",
    ]
    losses["neural_sim"] = record_losses(train_neural_sim, compose_cfg(ns))
    return losses


@pytest.fixture(scope="module")
def losses(datasets, tmp_path_factory):
    return run_every_trainer(datasets[0], tmp_path_factory.mktemp("same_losses"))


@pytest.mark.parametrize("trainer", ["lam", "backbone", "policy", "policy_scratch", "state_fm", "neural_sim"])
def test_the_shared_loop_gives_the_losses_of_the_separate_loops(losses, trainer):
    before = json.loads(GOLDEN.read_text())["losses"][trainer]
    after = losses[trainer]
    assert len(after) == len(before) == STEPS, (len(after), len(before))
    assert len(set(before)) > 1  # the losses move: a loop that does not train would not match them
    torch.testing.assert_close(torch.tensor(after, dtype=torch.float64), torch.tensor(before, dtype=torch.float64),
                               rtol=RTOL, atol=0)  # fmt: skip


if __name__ == "__main__":  # record the reference (run on the code before the refactor)
    import runpy
    import subprocess
    import tempfile

    from data.generate import close_envs, generate_demos, generate_video

    fixture = runpy.run_path(str(Path(__file__).parents[1] / "conftest.py"))  # the fixture datasets' configs
    DEMOS, TASK, VIDEO = fixture["DEMOS"], fixture["TASK"], fixture["VIDEO"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "datasets"
        try:
            generate_demos(DEMOS, TASK, root / "demos")
            generate_video(VIDEO, TASK, root / "video")
        finally:
            close_envs()
        recorded = run_every_trainer(root, Path(tmp) / "runs")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    GOLDEN.write_text(json.dumps({"commit": commit, "steps": STEPS, "losses": recorded}, indent=1) + "\n")
    print(f"wrote {GOLDEN}: " + ", ".join(f"{k} {len(v)}" for k, v in recorded.items()), file=sys.stderr)
