"""SIMPLER-style evaluation harness: any policy with LeRobot's `reset()` / `select_action(batch)`.

Episodes run in waves of `num_envs` parallel envs (gymnasium vector envs); episode i of every task
and protocol uses seed `seed + i`, so all policies face the same scenes. Success is read at the last
step, as SIMPLER does; grasp counts episodes in which the source object was grasped at some step. Each
wave seeds torch's generator with its first scene's seed, so a policy that samples draws the same noise on
the same scenes in every run.

    python -m sim.evaluate                                  # scripted expert and random policy
    python -m sim.evaluate eval=full 'task.tasks=[stack_block]' eval.num_envs=2

Sharded across processes or machines (each shard runs a contiguous range of episode indices, so the
scenes are those of one run; `python -m sim.merge --shards` adds the shards' counts back up):

    python -m sim.evaluate -m hydra/launcher=joblib eval.shard.count=2 eval.shard.index=0,1
    python -m sim.merge --shards reports/eval/quick reports/eval/quick/shards/*/results.json
"""

import functools
import importlib
import json
import multiprocessing
import os
import sys
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from lerobot.envs.utils import preprocess_observation
from omegaconf import DictConfig
from tqdm import tqdm

from sim.env import TabletopEnv
from sim.features import FeatureMap
from sim.metrics import wilson_interval
from sim.reporting import machine_line, stamp, write_atomic
from sim.tasks import PROTOCOLS, get_task
from sim.video import write_mp4

PolicyFactory = Callable[..., object]  # factory(task=name) -> policy with reset() / select_action(batch)


def suite_env(suite: str) -> type[gym.Env]:
    """The env class of a suite (`task.suite`): the tabletop tasks, Meta-World, or `module:Class` for an
    env of the tabletop's tasks defined elsewhere (the neural simulator), imported by name as gymnasium
    entry points are, so the harness never imports model code itself."""
    if suite == "tabletop":
        return TabletopEnv
    if suite == "metaworld":
        from sim.metaworld import MetaWorldEnv  # imports metaworld only when asked for

        return MetaWorldEnv
    if ":" in suite:
        module, name = suite.split(":")
        return getattr(importlib.import_module(module), name)
    raise ValueError(f"unknown suite {suite!r}; expected 'tabletop', 'metaworld' or 'module:Class'")


def suite_protocols_and_horizon(suite: str, task: str) -> tuple[tuple[str, ...], int]:
    if suite == "metaworld":
        from sim import metaworld

        return metaworld.PROTOCOLS, metaworld.max_steps(task)
    suite_env(suite)
    return PROTOCOLS, get_task(task).max_steps


def make_vector_env(
    task: str,
    protocol: str,
    num_envs: int,
    image_size: int = 64,
    robot: str = "widowx",
    control_hz: float = 5.0,
    suite: str = "tabletop",
    env_kwargs: dict | None = None,
) -> gym.vector.VectorEnv:
    """`env_kwargs`: the suite's own options (task.env: Meta-World's camera and state)."""
    make = functools.partial(
        suite_env(suite),
        task,
        protocol,
        image_size=image_size,
        robot=robot,
        control_hz=control_hz,
        **(env_kwargs or {}),
    )
    # Episodes are reset explicitly, with seeds, in waves. Autoreset must be off: gymnasium 1.4's async
    # worker without shared memory never clears its autoreset flag on reset(), so the first step of
    # the next wave would silently reset the env again with an unseeded scene.
    no_autoreset = gym.vector.AutoresetMode.DISABLED
    if num_envs == 1:
        return gym.vector.SyncVectorEnv([make], autoreset_mode=no_autoreset)
    # No shared memory: the instruction is a Text space, which shared memory cannot hold. Workers
    # come from a fork server, not a fork of this process: a forked EGL context deadlocks. The server
    # imports the main module once, so workers start without re-importing torch and lerobot.
    extra = {"metaworld": ["sim.metaworld"]}.get(suite, [suite.split(":")[0]] if ":" in suite else [])
    multiprocessing.set_forkserver_preload(["__main__", "sim.env", *extra])
    return gym.vector.AsyncVectorEnv(
        [make] * num_envs, shared_memory=False, context="forkserver", autoreset_mode=no_autoreset
    )


def obs_to_batch(obs: dict) -> dict:
    """Vector-env observation -> LeRobot batch (observation.images.image in [0, 1], observation.state, task)."""
    batch = preprocess_observation({k: v for k, v in obs.items() if k != "task"})
    batch["task"] = list(obs["task"])
    return batch


def _actions_to_numpy(action, envs: gym.vector.VectorEnv, policy_name: str) -> np.ndarray:
    action = action.detach().cpu().numpy() if isinstance(action, torch.Tensor) else np.asarray(action)
    expected = envs.action_space.shape  # (num_envs, action dim)
    if action.shape != expected:
        raise ValueError(
            f"policy {policy_name!r} returned actions of shape {action.shape}; expected {expected}"
        )
    return action.astype(np.float32)


def run_episodes(
    policy,
    envs: gym.vector.VectorEnv,
    episodes: int,
    max_steps: int,
    seed: int = 0,
    video_path: Path | None = None,
    policy_name: str = "policy",
    progress: tqdm | None = None,
    fps: float = 5.0,
) -> dict[str, list]:
    """Roll out `episodes` episodes; records the first episode to `video_path` if given."""
    n = envs.num_envs
    success, grasped, to_source, to_target = [], [], [], []
    for start in range(0, episodes, n):
        obs, _ = envs.reset(seed=[seed + start + i for i in range(n)])
        # The policy's own sampling noise (torch's global generator), seeded with the wave's scenes: two
        # policies that draw alike face the same noise on the same scenes (a paired comparison, e.g. of
        # one decoder's samplers), and a rerun repeats its episodes.
        torch.manual_seed(seed + start)
        policy.reset()
        if start == 0:  # the policy's keys for the env's camera and state, checked once
            match = FeatureMap(
                policy, obs_to_batch(obs), hint=f" (policy {policy_name!r}: set task.image_size)"
            )
        frames = [obs["pixels"]["image"][0]] if (video_path is not None and start == 0) else None
        for _ in range(max_steps):
            with torch.inference_mode():
                action = policy.select_action(match(obs_to_batch(obs)))
            obs, _, _, _, info = envs.step(_actions_to_numpy(action, envs, policy_name))
            if frames is not None:
                frames.append(obs["pixels"]["image"][0])
        keep = min(n, episodes - start)  # the last wave may run more envs than episodes are left
        success += [bool(s) for s in info["is_success"][:keep]]
        grasped += [bool(g) for g in info["grasped"][:keep]]
        to_source += first_close_cm(info, "close_to_source", keep)
        to_target += first_close_cm(info, "close_to_target", keep)
        if frames is not None:
            write_mp4(video_path, frames, fps=fps)
        if progress is not None:
            progress.update(keep)
    return {
        "success": success,
        "grasped": grasped,
        "close_to_source": to_source,
        "close_to_target": to_target,
    }


def first_close_cm(info: dict, key: str, keep: int) -> list[float | None]:
    """Per episode, the hand's x-y distance (cm) to an object at the gripper's first close (None where
    it never closed); [] where the suite does not record it (Meta-World)."""
    if key not in info:
        return []
    return [None if np.isnan(d) else round(100 * float(d), 1) for d in info[key][:keep]]


def summarize(outcomes: list[bool]) -> dict:
    return summarize_counts(sum(outcomes), len(outcomes))


def summarize_counts(k: int, n: int) -> dict:
    lo, hi = wilson_interval(k, n)
    return {"rate": k / max(n, 1), "ci95": [lo, hi], "n": n}


def shard_range(episodes: int, index: int, count: int) -> range:
    """Episode indices of shard `index` of `count`: contiguous, sizes differing by at most one."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"eval.shard.index={index} must be in [0, eval.shard.count={count})")
    if count > episodes:
        raise ValueError(
            f"eval.shard.count={count} exceeds episodes_per_task={episodes}: some shards would be empty"
        )
    bounds = [episodes * i // count for i in range(count + 1)]
    return range(bounds[index], bounds[index + 1])


def add_averages(results: dict, protocols: list[str]) -> dict:
    """Per policy, the mean over tasks of each rate, and the headline table (SIMPLER's average success)."""
    for entry in results["policies"].values():
        entry["average"] = {
            p: {
                key: float(np.mean([t[p][key]["rate"] for t in entry["tasks"].values()]))
                for key in ("success", "grasp")
            }
            for p in protocols
        }
    results["average_success"] = {
        name: {p: entry["average"][p]["success"] for p in protocols}
        for name, entry in results["policies"].items()
    }
    return results


def evaluate(
    policies: dict[str, PolicyFactory],
    tasks: list[str],
    protocols: list[str],
    episodes: int,
    num_envs: int = 2,
    seed: int = 0,
    image_size: int = 64,
    video_dir: Path | None = None,
    control_hz: float = 5.0,
    shard: tuple[int, int] = (0, 1),
    suite: str = "tabletop",
    env_kwargs: dict | None = None,
) -> dict:
    """Evaluate each policy on each task and protocol; returns the results dict written to results.json.
    With `shard=(index, count)`, only that shard's episodes run (`shard_range`)."""
    horizons = {}
    for t in tasks:
        known, horizons[t] = suite_protocols_and_horizon(suite, t)
        for p in protocols:
            if p not in known:
                raise ValueError(f"unknown protocol {p!r} for the {suite} suite; expected one of {known}")
    if not policies or not tasks or not protocols:
        raise ValueError(
            f"need at least one policy, task and protocol; got {list(policies)}, {tasks}, {protocols}"
        )
    if episodes < 1 or num_envs < 1:
        raise ValueError(f"episodes and num_envs must be >= 1, got episodes={episodes}, num_envs={num_envs}")
    mine = shard_range(episodes, *shard)
    total = len(policies) * len(protocols) * len(tasks) * len(mine)
    results = {"episodes_per_task": episodes, "seed": seed, "image_size": image_size, "policies": {}}
    if shard[1] > 1:
        results["shard"] = {"index": shard[0], "count": shard[1], "episodes": [mine.start, mine.stop]}
        video_dir = video_dir if mine.start == 0 else None  # the first episode lives in shard 0
    with tqdm(total=total, desc="eval episodes", unit="ep") as progress:
        for task in tasks:
            # One set of workers per task; the protocol is an attribute read at reset.
            envs = make_vector_env(
                task,
                protocols[0],
                min(num_envs, len(mine)),
                image_size,
                control_hz=control_hz,
                suite=suite,
                env_kwargs=env_kwargs,
            )
            try:
                for protocol in protocols:
                    envs.set_attr("protocol", protocol)
                    for name, factory in policies.items():
                        progress.set_postfix_str(f"{name} {task} {protocol}")
                        video = video_dir / f"{name}_{task}_{protocol}.mp4" if video_dir else None
                        policy = factory(task=task)
                        out = run_episodes(
                            policy, envs, len(mine), horizons[task], seed + mine.start, video, name, progress
                        )
                        per_task = results["policies"].setdefault(name, {"tasks": {}})["tasks"]
                        per_task.setdefault(task, {})[protocol] = {
                            "success": summarize(out["success"]),
                            "grasp": summarize(out["grasped"]),
                        }
                        if out["close_to_source"]:  # per episode, so that shards merge exactly
                            per_task[task][protocol]["first_close"] = {
                                "to_source_cm": out["close_to_source"],
                                "to_target_cm": out["close_to_target"],
                            }
            finally:
                envs.close()
    return add_averages(results, protocols)


def _pct(stat: dict) -> str:
    lo, hi = stat["ci95"]
    return f"{100 * stat['rate']:.0f} [{100 * lo:.0f}, {100 * hi:.0f}]"


def results_markdown(results: dict) -> str:
    """SIMPLER-style tables: one per protocol, tasks as rows, success and grasp (%) per policy."""
    names = list(results["policies"])
    lines = []
    protocols = list(next(iter(results["policies"].values()))["average"])
    for protocol in protocols:
        lines += [
            f"### {protocol.replace('_', ' ')} ({results['episodes_per_task']} episodes per task, success % [Wilson 95%] / grasp %)",
            "",
        ]
        lines.append("| task | " + " | ".join(names) + " |")
        lines.append("|---|" + "---|" * len(names))
        tasks = list(results["policies"][names[0]]["tasks"])
        for task in tasks:
            cells = [
                f"{_pct(results['policies'][n]['tasks'][task][protocol]['success'])} / "
                f"{100 * results['policies'][n]['tasks'][task][protocol]['grasp']['rate']:.0f}"
                for n in names
            ]
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
        avg = [
            f"**{100 * results['policies'][n]['average'][protocol]['success']:.1f}** / "
            f"{100 * results['policies'][n]['average'][protocol]['grasp']:.0f}"
            for n in names
        ]
        lines += ["| average | " + " | ".join(avg) + " |", ""]
        lines += first_close_table(results, protocol, names, tasks)
    return "\n".join(lines)


def first_close_table(results: dict, protocol: str, names: list[str], tasks: list[str]) -> list[str]:
    """Where each policy first closed its gripper: % of episodes it closed at all, % within 2 cm (x-y) of
    the object to pick, median cm to it and to the target. Empty when the suite does not record it."""
    entries = [
        [results["policies"][n]["tasks"][t][protocol].get("first_close") for t in tasks] for n in names
    ]
    if not all(e is not None for row in entries for e in row):
        return []
    lines = [
        f"First close, {protocol.replace('_', ' ')}: closed % / within 2 cm of the object to pick % / "
        "median cm to it, to the target",
        "",
        "| task | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for j, task in enumerate(tasks):
        lines.append(f"| {task} | " + " | ".join(first_close_cell(row[j]) for row in entries) + " |")
    return lines + [""]


def first_close_cell(entry: dict) -> str:
    """ "closed % / within 2 cm of the object to pick % / median cm to it, to the target" of one entry."""
    source = [d for d in entry["to_source_cm"] if d is not None]
    target = [d for d in entry["to_target_cm"] if d is not None]
    n = max(len(entry["to_source_cm"]), 1)
    medians = f"{np.median(source):.1f}, {np.median(target):.1f}" if source else "-"
    return f"{100 * len(source) / n:.0f} / {100 * sum(d <= 2 for d in source) / n:.0f} / {medians}"


def write_report(results: dict, out_dir: Path, command: str) -> str:
    """results.json and results.md under out_dir, each with the command, commit and machine that made them."""
    results = {**results, **stamp(command)}
    table = results_markdown(results)
    write_atomic(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    machine = machine_line(results["machine"])
    footer = f"Command: `{command}`  \nCommit: `{results['commit']}`  \nMachine: {machine}\n"
    write_atomic(out_dir / "results.md", f"{table}\n{footer}")
    bar_chart(results, out_dir / "results.png")
    return table


def bar_chart(results: dict, path: Path) -> None:
    """Average success per policy, one bar per protocol, with the average of the tasks' Wilson intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["policies"])
    protocols = list(results["policies"][names[0]]["average"])
    width = 0.8 / len(protocols)
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names) + 2), 3.6))
    for j, protocol in enumerate(protocols):
        rates, lows, highs = [], [], []
        for n in names:
            tasks = results["policies"][n]["tasks"].values()
            rates.append(100 * results["policies"][n]["average"][protocol]["success"])
            lows.append(100 * np.mean([t[protocol]["success"]["ci95"][0] for t in tasks]))
            highs.append(100 * np.mean([t[protocol]["success"]["ci95"][1] for t in tasks]))
        x = np.arange(len(names)) + (j - (len(protocols) - 1) / 2) * width
        err = np.clip([np.subtract(rates, lows), np.subtract(highs, rates)], 0, None)
        ax.bar(x, rates, width, yerr=err, capsize=3, label=protocol.replace("_", " "))
    ax.set_xticks(np.arange(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("average success (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{results['episodes_per_task']} episodes per task; bars: mean of per-task Wilson 95%")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    out_dir = Path(cfg.eval.report_dir)
    shard = (cfg.eval.shard.index, cfg.eval.shard.count)
    if shard[1] > 1:
        out_dir = out_dir / "shards" / f"{shard[0]}-of-{shard[1]}"
    unknown = [n for n in cfg.eval.policies if n not in cfg.policies]
    if unknown:
        raise ValueError(
            f"eval.policies names {unknown}, which are not under `policies:`; known: {list(cfg.policies)}"
        )
    policies = {name: instantiate(cfg.policies[name]) for name in cfg.eval.policies}
    results = evaluate(
        policies,
        list(cfg.task.tasks),
        list(cfg.eval.protocols),
        cfg.eval.episodes_per_task,
        cfg.eval.num_envs,
        cfg.eval.seed,
        cfg.task.image_size,
        out_dir / "videos" if cfg.eval.save_videos else None,
        control_hz=cfg.task.fps,
        shard=shard,
        suite=cfg.task.get("suite", "tabletop"),
        env_kwargs=dict(cfg.task.get("env") or {}),
    )
    print(write_report(results, out_dir, "python -m sim.evaluate " + " ".join(sys.argv[1:])))
    print(f"wrote {out_dir / 'results.json'} and {out_dir / 'results.md'}")


if __name__ == "__main__":
    main()
