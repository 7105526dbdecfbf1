"""The shared training loop, once for every model it trains (as LeRobot's tests/policies run the same
checks over every policy): a resumed CPU run continues bit-exactly, a non-finite loss stops training
and keeps the last good checkpoint, a checkpoint left mid-swap by a killed run is restored, and a
checkpoint of another model config is refused. Plus the schedule and the weight average."""

from types import SimpleNamespace

import pytest
import torch
from omegaconf import open_dict
from safetensors.torch import load_file

from tests.training.runs import (
    MODELS,
    TRAIN_KEY,
    compose_cfg,
    make_labels,
    make_rollouts,
    overrides,
    train_function,
)
from world_model.training.checkpoint import CKPT_DIR
from world_model.training.schedule import warmup_cosine
from world_model.training.trainer import Trainer

STEPS, KILLED_AT = 6, 3  # checkpoints every 3 steps; a killed run dies during step 3 (0-based)


@pytest.fixture(scope="module")
def inputs(datasets, tmp_path_factory):
    work = tmp_path_factory.mktemp("trainer_inputs")
    root = datasets[0]
    return SimpleNamespace(
        root=root, labels=make_labels(root, work), rollouts=make_rollouts(work), backbone=None
    )


def run_cfg(model, inputs, out_dir, steps=STEPS):
    cfg = compose_cfg(overrides(model, inputs, out_dir, steps))
    cfg.train[TRAIN_KEY[model]].ckpt_every = 3
    return cfg


def fail_at(monkeypatch, step: int, error: Exception | None = None):
    """Make the trainer's forward fail at `step`: raise `error`, or return a NaN loss when None."""
    real = Trainer.forward

    def forward(self, parallel, micro_batch, at):
        if at == step and error is not None:
            raise error
        loss, terms = real(self, parallel, micro_batch, at)
        return (loss * float("nan") if at == step else loss), terms

    monkeypatch.setattr(Trainer, "forward", forward)


def checkpoint_tensors(out_dir) -> dict[str, torch.Tensor]:
    ckpt = out_dir / CKPT_DIR
    return {f"{f.stem}/{k}": v for f in sorted(ckpt.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.mark.parametrize("model", MODELS)
def test_a_killed_run_resumes_bit_exactly(model, inputs, tmp_path, monkeypatch):
    train = train_function(model)
    train(run_cfg(model, inputs, tmp_path / "straight"))
    with monkeypatch.context() as patch:
        fail_at(patch, KILLED_AT, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            train(run_cfg(model, inputs, tmp_path / "resumed"))
    summary = train(run_cfg(model, inputs, tmp_path / "resumed"))
    assert summary["resumed_at"] == KILLED_AT and summary["steps"] == STEPS
    straight, resumed = checkpoint_tensors(tmp_path / "straight"), checkpoint_tensors(tmp_path / "resumed")
    assert straight.keys() == resumed.keys() and any(k.startswith("train_state/opt.") for k in straight)
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    assert (tmp_path / "resumed/tb").is_dir() and (tmp_path / "resumed/config.yaml").is_file()


@pytest.mark.parametrize("model", MODELS)
def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint(model, inputs, tmp_path, monkeypatch):
    fail_at(monkeypatch, 4)
    with pytest.raises(FloatingPointError, match="at step 4.*last good checkpoint"):
        train_function(model)(run_cfg(model, inputs, tmp_path))
    assert '"step": 3' in (tmp_path / CKPT_DIR / "state.json").read_text()
    weights = checkpoint_tensors(tmp_path)
    assert all(torch.isfinite(v).all() for k, v in weights.items() if not k.startswith("train_state"))


@pytest.mark.parametrize("model", MODELS)
def test_a_checkpoint_left_mid_swap_is_restored_and_another_config_refused(model, inputs, tmp_path):
    train = train_function(model)
    train(run_cfg(model, inputs, tmp_path, steps=KILLED_AT))
    last = tmp_path / CKPT_DIR
    last.rename(last.with_name(".last.old"))  # as if killed between save_checkpoint's two renames
    assert train(run_cfg(model, inputs, tmp_path, steps=4))["resumed_at"] == KILLED_AT
    cfg = run_cfg(model, inputs, tmp_path, steps=5)
    section = "model.policy" if model == "state_fm" else f"model.{TRAIN_KEY[model]}"
    width = "width" if model == "neural_sim" else "dim"
    cfg[section.split(".")[0]][section.split(".")[1]][width] = 24
    with pytest.raises(ValueError, match="trained with model config"):
        train(cfg)


def test_warmup_cosine_rises_then_falls_to_its_floor():
    assert warmup_cosine(0, 100, warmup=10, floor=0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, warmup=10, floor=0.1) == 1.0
    assert warmup_cosine(10, 100, warmup=10, floor=0.1) == 1.0
    assert warmup_cosine(55, 100, warmup=10, floor=0.1) == pytest.approx(0.55)
    assert warmup_cosine(100, 100, warmup=10, floor=0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 100, warmup=10, floor=0.0) == pytest.approx(0.0)  # held past the end


def test_the_weight_average_is_available_to_every_model_and_loaded_for_inference(inputs, tmp_path):
    """EMA on the latent action model: the checkpoint keeps both, inference reads the average."""
    from world_model.lam.model import load_lam

    cfg = run_cfg("lam", inputs, tmp_path, steps=3)
    cfg.train.lam.ema = {"decay": 0.9, "power": 0.75}
    train_function("lam")(cfg)
    raw, ema = (
        load_file(tmp_path / CKPT_DIR / "model.safetensors"),
        load_file(tmp_path / CKPT_DIR / "ema.safetensors"),
    )
    key = "idm.readout.weight"
    assert not torch.equal(raw[key], ema[key])
    assert torch.equal(load_lam(tmp_path).state_dict()[key], ema[key])


def test_a_weight_average_of_a_model_of_several_modules_is_refused(inputs, tmp_path):
    cfg = run_cfg("neural_sim", inputs, tmp_path, steps=4)
    with open_dict(cfg):
        cfg.train.neural_sim.ema = {"decay": 0.9}
    with pytest.raises(
        ValueError, match="train.neural_sim.ema: the weight average follows the one checkpointed"
    ):
        train_function("neural_sim")(cfg)


def test_inference_modules_do_not_load_a_training_module():
    """Loading a model for inference (the LAM and its labeller, the backbone, the neural simulator and
    its env, the policy) never imports a trainer or a training entry point."""
    import subprocess
    import sys

    inference = ["world_model.lam.model", "world_model.lam.label", "world_model.backbone.model",
                 "world_model.neural_sim.simulator", "world_model.neural_sim.env", "policies.vipra"]  # fmt: skip
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in inference)
        + "ours = [m for m in sys.modules if m.split('.')[0] in ('world_model', 'policies', 'data', 'sim')]\n"
        "bad = sorted(m for m in ours if m.endswith(('.train', 'train_policy', '.trainer')))\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
