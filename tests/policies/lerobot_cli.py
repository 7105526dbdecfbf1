"""LeRobot's own command-line tools run on our checkpoints, in a subprocess as a user would run them."""

import json
import subprocess
import sys
from pathlib import Path


def lerobot_eval_one_episode(policy_path: Path, out: Path, task: str = "stack_block") -> dict:
    """`lerobot-eval` of a pretrained_model folder for 1 episode on the tabletop env: its eval_info.json,
    checked to hold that episode."""
    cmd = [
        sys.executable, "-m", "lerobot.scripts.lerobot_eval", f"--policy.path={policy_path}", "--env.type=tabletop",
        f"--env.task={task}", "--eval.n_episodes=1", "--eval.batch_size=1", f"--output_dir={out}",
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stderr[-3000:]
    info = json.loads((out / "eval_info.json").read_text())
    assert info["overall"]["n_episodes"] == 1 and 0.0 <= info["overall"]["pc_success"] <= 100.0
    return info
