"""The training loop refactor changed no number: every trainer's first 20 losses at a fixed seed, on a tiny
profile on CPU, equal those recorded before the loop was shared (`losses_before_refactor.json`, written by
the four separate loops of commit cd2dce2 with `PYTHONPATH=. python tests/training/test_same_losses.py`; the shared
loop reproduced them bit for bit). When the demo expert changed the fixture data (its grasp settle, after 3274555),
the shared loop re-recorded all but the neural simulator's, whose inputs did not change; when the CPU profile
became the waypoint recipe (after 042166a) it re-recorded the backbone's and the policies' (the LAM's, state_fm's
and the neural simulator's still matched). From there on the file guards the shared loop against changes to its
numbers.

The losses are read where every loop hands them to autograd (`Tensor.backward`), so the check needs no
hook in the trainer it checks."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.training.runs import (
    compose_cfg,
    make_labels,
    make_rollouts,
    overrides,
    record_losses,
    train_function,
)

GOLDEN = Path(__file__).with_name("losses_before_refactor.json")
STEPS = 20
RUNS = ["lam", "backbone", "policy", "policy_scratch", "state_fm", "neural_sim"]
# Bit-exact here; the tolerance leaves room for another CPU's kernels, not for another computation.
RTOL = 1e-6


def run_every_trainer(root: Path, work: Path) -> dict[str, list[float]]:
    """The first losses of each trainer on the fixture datasets under `root` (demos, video)."""
    inputs = SimpleNamespace(root=root, backbone=work / "backbone", state_steps=STEPS // 2)

    def run(name: str, model: str) -> list[float]:
        cfg = compose_cfg(overrides(model, inputs, work / name, STEPS))
        return record_losses(train_function(model), cfg)

    losses = {"lam": run("lam", "lam")}
    inputs.labels = make_labels(root, work, lam_dir=work / "lam")  # the backbone learns this LAM's codes
    losses["backbone"] = run("backbone", "backbone")
    losses["policy"] = run("policy", "policy")
    inputs.backbone = None
    losses["policy_scratch"] = run("policy_scratch", "policy")
    losses["state_fm"] = run("state_fm", "state_fm")
    inputs.rollouts = make_rollouts(work)
    losses["neural_sim"] = run("neural_sim", "neural_sim")
    return losses


@pytest.fixture(scope="module")
def losses(datasets, tmp_path_factory):
    return run_every_trainer(datasets[0], tmp_path_factory.mktemp("same_losses"))


@pytest.mark.parametrize("run", RUNS)
def test_the_shared_loop_gives_the_losses_of_the_separate_loops(losses, run):
    before = json.loads(GOLDEN.read_text())["losses"][run]
    after = losses[run]
    assert len(after) == len(before) == STEPS, (len(after), len(before))
    assert len(set(before)) > 1  # the losses move: a loop that does not train would not match them
    torch.testing.assert_close(
        torch.tensor(after, dtype=torch.float64), torch.tensor(before, dtype=torch.float64), rtol=RTOL, atol=0
    )


if __name__ == "__main__":  # record the reference (run on the code before the refactor)
    import runpy
    import subprocess
    import tempfile

    from data.generate import close_envs, generate_demos, generate_video

    fixture = runpy.run_path(str(Path(__file__).parents[1] / "conftest.py"))  # the fixture datasets' configs
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "datasets"
        try:
            generate_demos(fixture["DEMOS"], fixture["TASK"], root / "demos")
            generate_video(fixture["VIDEO"], fixture["TASK"], root / "video")
        finally:
            close_envs()
        recorded = run_every_trainer(root, Path(tmp) / "runs")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    GOLDEN.write_text(json.dumps({"commit": commit, "steps": STEPS, "losses": recorded}, indent=1) + "\n")
    print(f"wrote {GOLDEN}: " + ", ".join(f"{k} {len(v)}" for k, v in recorded.items()), file=sys.stderr)
