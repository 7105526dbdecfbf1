"""python -m policies.control [robot=mujoco|so100] [control.policy.path=...] [control.loop.hz=50] ...

Drives the robot with the policy at a fixed rate, printing a live status line; Ctrl-C holds the robot
still and disconnects it. Writes summary.json (per episode) and events.jsonl to the run dir.
"""

import json
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import data  # noqa: F401  (offline hub before lerobot is imported)
import sim  # noqa: F401  (MUJOCO_GL before mujoco is imported)
from policies.control.runtime import ControlConfig
from policies.control.session import load_policy, make_robot, run_session
from sim.reporting import write_atomic


def instruction_for(cfg: DictConfig, robot) -> str:
    if cfg.robot.instruction:
        return str(cfg.robot.instruction)
    if hasattr(robot, "instruction"):
        return robot.instruction
    raise ValueError("robot.instruction is null and the robot has no task of its own: set robot.instruction")


def status_line(text: str) -> None:
    sys.stderr.write("\r" + text)
    sys.stderr.flush()


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    c = cfg.control
    out_dir = Path(c.out_dir or HydraConfig.get().runtime.output_dir)
    loop_cfg = ControlConfig(
        **OmegaConf.to_container(c.loop, resolve=True),
        safety=OmegaConf.to_container(cfg.robot.safety, resolve=True),
    )
    robot = make_robot(cfg.robot.config)
    policy = load_policy(
        c.policy.path, c.policy.device, OmegaConf.to_container(c.policy.overrides, resolve=True)
    )

    def on_episode(i: int, result) -> None:
        summary = result.report.summary()
        sys.stderr.write("\n")
        logging.info("episode %d: %s %s", i, result.info, json.dumps(summary))

    results = []
    try:
        run_session(
            robot,
            policy,
            loop_cfg,
            instruction_for(cfg, robot),
            episodes=c.episodes,
            duration_s=c.duration_s,
            seed=c.seed,
            on_status=status_line,
            on_episode=on_episode,
            results=results,
        )
    finally:  # also after Ctrl-C or an error: what ran is kept
        summaries = [{**r.report.summary(), **r.info} for r in results if r.report.tick_start]
        write_atomic(out_dir / "summary.json", json.dumps(summaries, indent=2, default=bool) + "\n")
        events = [json.dumps(e) for r in results for e in r.report.events]
        write_atomic(out_dir / "events.jsonl", "\n".join(events) + "\n")
        print(f"\n{len(results)} episode(s); summary and events in {out_dir}")


if __name__ == "__main__":
    main()
