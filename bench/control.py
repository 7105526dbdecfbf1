"""make bench-control: the real-time loop on the MuJoCo robot with the best trained policy
-> reports/bench/control.json and reports/figures/control.png.

    python -m bench.control experiment=results [control.policy.path=...] [bench_control.episodes_per_task=5]

- hz20 / hz50: timing of the loop (RTC-style blending on), over real-time episodes of every task:
  period, jitter (|period - 1/hz|), deadline misses, inference time, boundary_jump_ratio.
- boundary_jump_ratio_by_smoothing: the 20 Hz ratio with blending, ensembling and no smoothing.
- success_realtime vs success_offline: the same policy (decoded with eval.flow_steps Euler steps, make
  results' 1 under experiment=results) on the same scenes (visual matching, seeds
  eval.seed + i), once through the 20 Hz loop in wall-clock time and once offline (sim.evaluate's
  synchronous 5 Hz rollouts); with Wilson 95% intervals, and grasp rates beside them. At the top level
  for the learned policy; under `scripted_chunks` for the scripted expert planning open-loop chunks
  (sim.experts.ChunkedExpertPolicy), a chunking policy that succeeds, so the comparison can fail.
"""

import json
import os
import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import data  # noqa: F401  (offline hub before lerobot is imported)
import sim  # noqa: F401  (MUJOCO_GL before mujoco is imported)
from bench.common import stamp, write_atomic
from policies.control.runtime import ENV_KEY, ControlConfig, summarize
from policies.control.safety import SafetyFilter
from policies.control.session import load_policy, make_robot, run_session
from sim.evaluate import make_vector_env, run_episodes
from sim.experts import ChunkedExpertPolicy
from sim.metrics import wilson_interval
from sim.tasks import get_task


def loop_config(cfg: DictConfig, **overrides) -> ControlConfig:
    loop = OmegaConf.to_container(cfg.control.loop, resolve=True) | {"status_every_s": 0} | overrides
    return ControlConfig(**loop, safety=OmegaConf.to_container(cfg.robot.safety, resolve=True))


def realtime_episodes(cfg: DictConfig, make_policy, loop: ControlConfig, episodes: int, bar: tqdm) -> list:
    """`episodes` real-time episodes per task on visual-matching scenes eval.seed + i, with the policy
    make_policy(task) (the robot also observes object poses for a policy that reads them)."""
    results = []
    for task in cfg.task.tasks:
        policy = make_policy(task)
        privileged = ENV_KEY in policy.config.input_features
        robot_cfg = OmegaConf.to_container(cfg.robot.config, resolve=True)
        robot = make_robot(
            robot_cfg | {"task": task, "protocol": "visual_matching", "privileged": privileged}
        )
        spec = get_task(task)
        bar.set_postfix_str(f"{loop.hz:g} Hz {loop.smoothing} {task}")
        for r in run_session(
            robot, policy, loop, spec.instruction, episodes=episodes, duration_s=spec.max_steps / loop.policy_hz,
            seed=cfg.eval.seed, on_episode=lambda *_: bar.update(1),
        ):  # fmt: skip
            results.append((task, r))
    return results


def offline_episodes(cfg: DictConfig, make_policy, episodes: int) -> list[dict]:
    """The same scenes through sim.evaluate's synchronous rollouts (5 Hz, select_action replanning
    every n_action_steps): one {is_success, grasped} per episode, tasks in order."""
    out = []
    for task in cfg.task.tasks:
        envs = make_vector_env(task, "visual_matching", 1, image_size=cfg.task.image_size)
        try:
            r = run_episodes(make_policy(task), envs, episodes, get_task(task).max_steps, seed=cfg.eval.seed)
        finally:
            envs.close()
        out += [{"is_success": s, "grasped": g} for s, g in zip(r["success"], r["grasped"], strict=True)]
    return out


def compare(realtime: list, offline: list[dict]) -> dict:
    """Success and grasp rates, real-time vs offline, and whether real-time falls in offline's interval."""
    infos = [r.info for _, r in realtime]
    out = {
        f"{key}_{mode}": rate([bool(i[flag]) for i in episodes])
        for key, flag in (("success", "is_success"), ("grasp", "grasped"))
        for mode, episodes in (("realtime", infos), ("offline", offline))
    }
    lo, hi = out["success_offline"]["ci95"]
    out["realtime_within_offline_ci"] = bool(lo <= out["success_realtime"]["rate"] <= hi)
    return out


def rate(outcomes: list[bool]) -> dict:
    lo, hi = wilson_interval(sum(outcomes), len(outcomes))
    return {"rate": sum(outcomes) / len(outcomes), "ci95": [lo, hi], "n": len(outcomes)}


def action_scale(cfg: DictConfig, loop: ControlConfig) -> np.ndarray:
    """The action range in executed units (delta dimensions shared among a policy step's ticks)."""
    f = SafetyFilter(loop.safety, len(cfg.robot.safety.low), loop.ticks_per_step)
    return (f.high - f.low) * f.scale


def plot(periods: dict, traces: dict, path: Path) -> None:
    """Period histograms (name -> reports) and 20 Hz action traces across boundaries (mode -> report)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for name, reports in periods.items():
        error = np.concatenate([(np.diff(r.tick_start) - 1 / r.hz) * 1000 for r in reports])
        label = (
            f"{name}: |error| p99 {np.percentile(np.abs(error), 99):.2f} ms, max {np.abs(error).max():.1f} ms"
        )
        axes[0].hist(error, bins=np.linspace(-6, 6, 121), alpha=0.6, label=label, log=True)
    axes[0].set(xlabel="tick period - 1/hz (ms)", ylabel="ticks", title="control period error")
    axes[0].legend()
    for ax, (mode, report) in zip(axes[1:], traces.items(), strict=True):
        actions = np.asarray(report.actions)[:160] * 4  # x delta in policy units (per 5 Hz step) at 20 Hz
        ticks = np.arange(len(actions))
        ax.plot(ticks, actions[:, 0], lw=1.2, label="dx")
        ax.plot(ticks, actions[:, 1], lw=1.2, label="dy")
        for t in np.flatnonzero(np.asarray(report.boundary)[: len(actions)])[1:]:
            ax.axvline(t, color="k", lw=0.6, ls=":")
        ax.set(
            xlabel="tick (20 Hz)",
            ylabel="m per 5 Hz step",
            title=f"actions across chunk boundaries (:), smoothing={mode}",
        )
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    b = cfg.bench_control
    c = cfg.control.policy
    overrides = OmegaConf.to_container(c.overrides, resolve=True)  # e.g. its Euler steps
    learned = load_policy(c.path, c.device, overrides)
    policies = {"learned": lambda task: learned, "scripted_chunks": lambda task: ChunkedExpertPolicy(task)}
    # (run, policy, Hz, smoothing, episodes per task): timing and success of the learned policy at 20 Hz,
    # then 50 Hz and the other smoothings, then the chunked expert (a policy that succeeds) at 20 Hz.
    plan = [
        ("hz20", "learned", 20, "blend", b.episodes_per_task),
        ("hz50", "learned", 50, "blend", 1),
        ("none", "learned", 20, "none", 1),
        ("ensemble", "learned", 20, "ensemble", 1),
        ("scripted_chunks", "scripted_chunks", 20, "blend", b.expert_episodes_per_task),
    ]
    runs, results = {}, {}
    total = sum(e for *_, e in plan) * len(cfg.task.tasks)
    with tqdm(total=total, desc="real-time episodes", unit="ep") as bar:
        for name, policy, hz, smoothing, episodes in plan:
            loop = loop_config(cfg, hz=hz, smoothing=smoothing)
            runs[name] = realtime_episodes(cfg, policies[policy], loop, episodes, bar)
    reports = {k: [r.report for _, r in v] for k, v in runs.items()}

    for name, hz in (("hz20", 20), ("hz50", 50)):
        results[name] = summarize(reports[name], action_scale(cfg, loop_config(cfg, hz=hz)))
        if results[name]["steps"] < b.min_steps:
            print(f"warning: {name} ran {results[name]['steps']} steps < {b.min_steps}", file=sys.stderr)
    scale20 = action_scale(cfg, loop_config(cfg, hz=20))
    results["boundary_jump_ratio_by_smoothing"] = {
        mode: summarize(reports[key], scale20)["boundary_jump_ratio"]
        for mode, key in (("blend", "hz20"), ("ensemble", "ensemble"), ("none", "none"))
    }
    results["boundary_jump_ratio"] = results["boundary_jump_ratio_by_smoothing"]["blend"]
    results["boundary_jump_ratio_no_smoothing"] = results["boundary_jump_ratio_by_smoothing"]["none"]

    # Real-time (20 Hz) vs offline success on the same scenes: the learned policy's at the top level.
    results |= compare(runs["hz20"], offline_episodes(cfg, policies["learned"], b.episodes_per_task))
    expert = offline_episodes(cfg, policies["scripted_chunks"], b.expert_episodes_per_task)
    results["scripted_chunks"] = compare(runs["scripted_chunks"], expert) | {
        "timing_20hz": summarize(reports["scripted_chunks"], scale20)
    }
    results["success_hz50"] = rate([bool(r.info["is_success"]) for _, r in runs["hz50"]])
    results["meta"] = {
        "policy": str(c.path),
        "policy_overrides": overrides,
        "loop": OmegaConf.to_container(cfg.control.loop, resolve=True),
        "episodes": {name: len(v) for name, v in runs.items()},
        "protocol": "visual_matching",
        "seed": cfg.eval.seed,
        "torch_threads_inference": cfg.control.loop.inference_threads,
        **stamp("python -m bench.control " + " ".join(sys.argv[1:])),
    }
    write_atomic(Path(b.out), json.dumps(results, indent=1) + "\n")
    plot(
        periods={"20 Hz": reports["hz20"], "50 Hz": reports["hz50"]},
        traces={"none": reports["none"][0], "blend": reports["hz20"][0]},
        path=Path(b.figure),
    )
    h20, h50, ex = results["hz20"], results["hz50"], results["scripted_chunks"]
    print(json.dumps(results, indent=1))
    print(
        f"control bench: 20 Hz jitter p99 {h20['jitter_ms_p99']:.2f} ms, {h20['deadline_misses']} misses / "
        f"{h20['steps']} steps; 50 Hz jitter p99 {h50['jitter_ms_p99']:.2f} ms, {h50['deadline_misses']} misses / "
        f"{h50['steps']} steps; inference p99 {h20['inference_ms_p99']:.1f} ms; boundary ratio "
        f"{results['boundary_jump_ratio']:.2f} (none: {results['boundary_jump_ratio_no_smoothing']:.2f}); success "
        f"{100 * results['success_realtime']['rate']:.1f}% real-time vs {100 * results['success_offline']['rate']:.1f}% "
        f"offline (chunked expert: {100 * ex['success_realtime']['rate']:.1f}% vs {100 * ex['success_offline']['rate']:.1f}%) "
        f"-> {b.out}"
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
