"""Connecting the pieces: a robot from its config, a policy from its checkpoint, and a session that
connects, runs the loop for some episodes and always disconnects."""

import contextlib
import importlib
import json
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path

import draccus
from omegaconf import DictConfig, OmegaConf

from policies.control.runtime import ControlConfig, ControlLoop, ControlReport


def make_robot(config: dict | DictConfig):
    """A LeRobot `Robot` from a config dict with a `type`: `mujoco_tabletop` (the sim suite's arm in
    wall-clock time) or any robot type LeRobot knows (so100_follower, koch_follower, ...)."""
    config = OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else dict(config)
    kind = config.get("type")
    if kind is None:
        raise ValueError(f"robot config needs a 'type'; got keys {sorted(config)}")
    if kind == "mujoco_tabletop":
        from sim.realtime import MujocoRobot, MujocoRobotConfig

        return MujocoRobot(MujocoRobotConfig(**{k: v for k, v in config.items() if k != "type"}))

    from lerobot.robots import RobotConfig
    from lerobot.robots.utils import make_robot_from_config

    _register_lerobot_devices()
    try:
        robot_config = draccus.decode(RobotConfig, config)
    except draccus.utils.DecodingError as e:
        raise ValueError(f"not a valid LeRobot robot config ({kind!r}): {e}") from e
    return make_robot_from_config(robot_config)


def _register_lerobot_devices() -> None:
    """Import LeRobot's robot and camera packages so their config classes are registered by type name."""
    import lerobot.cameras
    import lerobot.robots

    for package in (lerobot.robots, lerobot.cameras):
        for module in pkgutil.iter_modules(package.__path__):
            with contextlib.suppress(ImportError):  # a device whose SDK is missing stays unknown
                importlib.import_module(f"{package.__name__}.{module.name}")


def load_policy(path: str | Path, device: str = "cpu", overrides: dict | None = None):
    """A policy with `predict_action_chunk` from a checkpoint folder, with its saved processors: ours
    (type vipra, whose config takes `overrides`; those given as None keep the checkpoint's own), or any
    LeRobot policy."""
    path = Path(path)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"no policy checkpoint at {path} (expected config.json and model.safetensors)"
        )
    kind = json.loads(config_file.read_text()).get("type")
    if kind == "vipra":
        from policies.vipra import make_policy

        return make_policy(path, device=device, **overrides)
    if overrides:
        raise ValueError(f"overrides {overrides} apply to vipra policies only; {path} is a {kind!r} policy")
    from policies.runner import ProcessedPolicy

    return ProcessedPolicy.from_pretrained(path, device=device)


@dataclass
class EpisodeResult:
    report: ControlReport
    info: dict = field(default_factory=dict)  # the robot's judgement (simulation only): is_success, grasped


def run_session(
    robot,
    policy,
    cfg: ControlConfig,
    instruction: str,
    episodes: int = 1,
    duration_s: float | None = None,
    max_ticks: int | None = None,
    seed: int = 0,
    on_status=None,
    on_episode=None,
    clock=None,
    worker=None,
    results: list[EpisodeResult] | None = None,
) -> list[EpisodeResult]:
    """Check shapes, connect, run `episodes` episodes (a simulated robot draws scene seed + i for each),
    disconnect. Nothing is sent before the checks pass and the robot is connected.

    Episodes are appended to `results` (a new list by default) as they end, and an episode cut short
    by Ctrl-C or an error too (info {"stopped": reason}), so a caller can save them whatever happens.
    `clock` and `worker` replace the real ones (tests).
    """
    loop = ControlLoop(robot, policy, cfg, task=instruction, clock=clock, worker=worker)  # checks shapes
    loop.on_status = on_status
    try:
        robot.connect()
    except Exception as e:
        loop.close()
        raise ConnectionError(
            f"could not connect to robot {robot!s} ({type(e).__name__}: {e}); nothing was sent"
        ) from e
    results = [] if results is None else results
    loop.report = None
    try:
        for i in range(episodes):
            if hasattr(robot, "reset"):
                robot.reset(seed + i)
            if hasattr(policy, "reset"):
                policy.reset()
            report = loop.run(max_ticks=max_ticks, duration_s=duration_s)
            info = robot.info() if hasattr(robot, "info") else {}
            results.append(EpisodeResult(report, info))
            if on_episode is not None:
                on_episode(i, results[-1])
            if report.stop_reason == "watchdog":
                break
    except BaseException:
        if loop.report is not None and (not results or results[-1].report is not loop.report):
            results.append(EpisodeResult(loop.report, {"stopped": loop.report.stop_reason}))
        raise
    finally:
        loop.close()
        robot.disconnect()
    return results
