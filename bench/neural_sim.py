"""How well the neural simulator stands in for MuJoCo (make bench-neural-sim -> reports/bench/neural_sim.json).

    python -m bench.neural_sim                     # generates and trains what is missing
    python -m bench.neural_sim bench_neural_sim.episodes=10

- Agreement (SIMPLER's protocol): every policy under `bench_neural_sim.policies` (scripted experts with
  increasing noise, the expert that does not turn to the object, random actions, trained checkpoints
  when present) is evaluated by the same harness in MuJoCo and in the neural simulator, on the same
  seeded scenes; Pearson r and MMRV of the success rates across policies, per task and overall, and
  whether each policy's imagined success lies inside its MuJoCo Wilson 95% interval.
- Video fidelity (EWMBench-style, no language model): held-out rollouts replayed in the neural simulator
  from their first real frame and state with their real actions; PSNR and SSIM against MuJoCo's frames
  by horizon, the end-effector trajectory (the probe's reading of the imagined frames, and the state
  model's own) and the source object against the true positions (cm), and the judge's final verdicts.
- Throughput: neural and MuJoCo env steps per second, one env, one process.
"""

import json
import os
import sys
import time
import warnings
from pathlib import Path

import hydra
import matplotlib
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from bench.common import stamp, write_atomic
from data.chunks import split_episodes
from data.dataset import load_metadata
from data.generate import close_envs
from data.generate_rollouts import check_generated_with, generate_rollouts, generated_with
from sim.evaluate import evaluate
from sim.metrics import mmrv, pearson_r, wilson_interval
from world_model.metrics import psnr, ssim
from world_model.neural_sim.dynamics import ACTION, SUCCESS, world_columns
from world_model.neural_sim.env import CHECKPOINT_ENV, NeuralTabletopEnv
from world_model.neural_sim.simulator import load_neural_sim
from world_model.neural_sim.train import load_rollouts
from world_model.neural_sim.train import train as train_neural_sim

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NEURAL_SUITE = "world_model.neural_sim.env:NeuralTabletopEnv"


def ensure_model(cfg: DictConfig) -> Path:
    """Generate the rollouts and train the simulator if their folders are missing (or resume training)."""
    rollouts, out = Path(cfg.train.neural_sim.dataset), Path(cfg.train.neural_sim.out_dir)
    if not rollouts.exists():
        try:
            print(generate_rollouts(cfg.data.rollouts, cfg.task, rollouts))
        finally:
            close_envs()
    check_generated_with(rollouts, cfg.data.rollouts)  # a folder of other kinds is refused, not reused
    found, expected = load_metadata(rollouts).total_episodes, cfg.data.rollouts.episodes
    if found != expected:  # an interrupted generation
        warnings.warn(
            f"{rollouts} holds {found} episodes, data.rollouts.episodes asks for {expected}; "
            "delete the folder to generate it afresh",
            stacklevel=2,
        )
    if not (out / "summary.json").exists():
        print(train_neural_sim(cfg))
    check_trained_on(out, rollouts, cfg.train.neural_sim.state_steps + cfg.train.neural_sim.steps)
    return out


def check_trained_on(out: Path, rollouts: Path, total_steps: int) -> None:
    """Refuse a simulator trained on rollouts other than the folder's (regenerated since) or for another
    number of steps than the config's; one trained before the rollouts' record is only warned about."""
    summary = json.loads((out / "summary.json").read_text())
    if summary.get("steps") != total_steps:
        raise ValueError(
            f"the simulator in {out} was trained for {summary.get('steps')} steps, the config asks for "
            f"{total_steps} (train.neural_sim.state_steps + steps): delete {out} to train it afresh"
        )
    trained_on = summary.get("rollouts")
    if trained_on is None:
        warnings.warn(f"{out} does not record the rollouts it was trained on", stacklevel=2)
    elif trained_on != generated_with(rollouts):
        raise ValueError(
            f"the simulator in {out} was trained on other rollouts than {rollouts} holds now (generated "
            f"since): delete {out} to train it on them"
        )


# ---------------------------------------------------------------------------------------------- fidelity
@torch.no_grad()
def fidelity(cfg: DictConfig, checkpoint: Path) -> dict:
    """Replay held-out episodes open loop from their first frame and state with their real actions; errors
    by horizon (1 = the first prediction), and how often the judge's verdict on the last imagined state
    matches the sim's."""
    sim = load_neural_sim(checkpoint)
    tcfg = cfg.train.neural_sim
    bank = load_rollouts(tcfg.dataset, cfg.task.image_key)
    _, val = split_episodes(len(bank.episodes), tcfg.val_fraction, tcfg.seed)  # the split of training
    val_bank = bank.subset([bank.episodes[i] for i in val])
    starts = torch.unique(val_bank.episode_start)
    length = int((val_bank.episode_end[starts] - starts).min())  # common horizon of the held-out episodes
    steps = starts[:, None] + torch.arange(length + 1)  # (E, T + 1)
    real = val_bank.frames[steps].float() / 255  # (E, T + 1, 3, H, W)
    worlds = world_columns(val_bank)[steps]  # (E, T + 1, 15) robot state and object poses
    actions = val_bank.columns[ACTION][steps[:, :-1]]
    world = worlds[:, 0]
    context = sim.start(real[:, 0], world)
    keys = ("psnr", "ssim", "psnr_copy_first", "ee_probe_cm", "ee_dynamics_cm", "object_cm")
    by_h = {k: [] for k in keys}
    for h in range(length):
        last_action = torch.zeros_like(actions[:, 0]) if h == 0 else sim.clip_action(actions[:, h - 1])
        frame, world, context = sim.step(context, world, actions[:, h], last_action)
        target, true = real[:, h + 1], worlds[:, h + 1]
        by_h["psnr"].append(psnr(frame, target).mean().item())
        by_h["ssim"].append(ssim(frame, target).item())
        by_h["psnr_copy_first"].append(psnr(real[:, 0], target).mean().item())
        by_h["ee_probe_cm"].append(cm(sim.read(frame)["state"][:, :3], true[:, :3]))
        by_h["ee_dynamics_cm"].append(cm(world[:, :3], true[:, :3]))
        by_h["object_cm"].append(cm(world[:, 7:10], true[:, 7:10]))
    verdict = sim.judge_state(world)["success"] > 0.5
    truth = val_bank.columns[SUCCESS][steps[:, -1]].squeeze(-1) > 0.5
    judged = {
        "final_judge_agreement": (verdict == truth).float().mean().item(),
        "final_judge_agreement_if_always_failed": (~truth).float().mean().item(),  # the baseline to beat
        "final_success_count": int(truth.sum()),
    }
    return {"episodes": len(starts), "horizon": length} | judged | by_h


def cm(predicted: torch.Tensor, true: torch.Tensor) -> float:
    """Mean distance (cm) between positions (B, 3) in metres."""
    return 100 * (predicted - true).norm(dim=-1).mean().item()


# ---------------------------------------------------------------------------------------------- agreement
def agreement(cfg: DictConfig, checkpoint: Path, nodes: DictConfig | None = None) -> dict:
    """Every policy of `nodes` (default: bench_neural_sim.policies) in MuJoCo and in the neural simulator."""
    bcfg = cfg.bench_neural_sim
    policies, learned = {}, []
    for name, node in (bcfg.policies if nodes is None else nodes).items():
        path = node.get("path")
        if path is not None and not Path(path).exists():
            print(f"skipping {name}: no checkpoint at {path}")
            continue
        policies[name] = instantiate(node)
        if path is not None:
            learned.append(name)
    tasks, protocols = list(cfg.task.tasks), [bcfg.protocol]
    os.environ[CHECKPOINT_ENV] = str(checkpoint)  # read by the neural env in the harness's workers
    runs = {}
    for label, suite in (("mujoco", "tabletop"), ("neural", NEURAL_SUITE)):
        runs[label] = evaluate(
            policies,
            tasks,
            protocols,
            bcfg.episodes,
            bcfg.num_envs,
            bcfg.seed,
            cfg.task.image_size,
            suite=suite,
        )

    def rates(label: str, task: str | None) -> list[float]:
        entries = runs[label]["policies"]
        if task is None:
            return [entries[n]["average"][bcfg.protocol]["success"] for n in policies]
        return [entries[n]["tasks"][task][bcfg.protocol]["success"]["rate"] for n in policies]

    per_task = {
        t: {
            "pearson_r": pearson_r(rates("mujoco", t), rates("neural", t)),
            "mmrv": mmrv(rates("mujoco", t), rates("neural", t)),
        }
        for t in tasks
    }
    n = bcfg.episodes * len(tasks)  # episodes per policy in each simulator
    intervals = {}
    for name, real, imagined in zip(policies, rates("mujoco", None), rates("neural", None), strict=True):
        lo, hi = wilson_interval(round(real * n), n)
        intervals[name] = {"mujoco_ci95": [lo, hi], "neural": imagined, "inside": lo <= imagined <= hi}
    return {
        "policies": list(policies),
        "learned": learned,
        "inside_mujoco_interval": intervals,
        "learned_inside_mujoco_interval": sum(intervals[n]["inside"] for n in learned),
        "success_mujoco": dict(zip(policies, rates("mujoco", None), strict=True)),
        "success_neural": dict(zip(policies, rates("neural", None), strict=True)),
        "grasp_mujoco": {
            n: runs["mujoco"]["policies"][n]["average"][bcfg.protocol]["grasp"] for n in policies
        },
        "grasp_neural": {
            n: runs["neural"]["policies"][n]["average"][bcfg.protocol]["grasp"] for n in policies
        },
        "per_task": per_task,
        "pearson_r": pearson_r(rates("mujoco", None), rates("neural", None)),
        "mmrv": mmrv(rates("mujoco", None), rates("neural", None)),
    }


# ---------------------------------------------------------------------------------------------- speed
def steps_per_s(env, steps: int) -> float:
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    low, high = env.action_space.low, env.action_space.high
    start = time.perf_counter()
    for _ in range(steps):
        _, _, _, truncated, _ = env.step(rng.uniform(low, high).astype(np.float32))
        if truncated:
            env.reset(seed=1)
    return steps / (time.perf_counter() - start)


def throughput(cfg: DictConfig, checkpoint: Path) -> dict:
    torch.set_num_threads(1)
    task = cfg.task.tasks[0]
    neural = NeuralTabletopEnv(task, image_size=cfg.task.image_size, checkpoint=str(checkpoint))
    try:
        out = {"neural_steps_per_s": steps_per_s(neural, cfg.bench_neural_sim.speed_steps)}
        out["mujoco_steps_per_s"] = steps_per_s(neural.real, cfg.bench_neural_sim.speed_steps)
    finally:
        neural.close()
    return out


# ---------------------------------------------------------------------------------------------- report
def plot(report: dict, path: Path) -> None:
    fid, agr = report["fidelity"], report["agreement"]
    h = np.arange(1, fid["horizon"] + 1)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(h, fid["psnr"], label="neural sim vs MuJoCo")
    axes[0].plot(h, fid["psnr_copy_first"], "--", label="first frame held (no model)")
    axes[0].set(xlabel="horizon (steps)", ylabel="PSNR (dB)", title="frames, open loop on held-out rollouts")
    axes[0].legend()
    axes[1].plot(h, fid["ee_probe_cm"], label="gripper, probe on imagined frames")
    axes[1].plot(h, fid["ee_dynamics_cm"], label="gripper, state model")
    axes[1].plot(h, fid["object_cm"], label="object, state model")
    axes[1].set(xlabel="horizon (steps)", ylabel="position error (cm)", title="gripper and object, open loop")
    axes[1].legend()
    names = agr["policies"]
    x = [agr["success_mujoco"][n] for n in names]
    y = [agr["success_neural"][n] for n in names]
    colours = ["tab:orange" if n in agr["learned"] else "tab:blue" for n in names]
    axes[2].scatter(x, y, c=colours)
    for n, xi, yi in zip(names, x, y, strict=True):
        axes[2].annotate(n, (xi, yi), fontsize=7)
    axes[2].plot([0, 1], [0, 1], "k:", lw=0.8)
    axes[2].set(
        xlabel="success in MuJoCo",
        ylabel="success in the neural simulator",
        title=f"agreement: r={agr['pearson_r']:.2f}, MMRV={agr['mmrv']:.3f} (orange: trained)",
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    bcfg = cfg.bench_neural_sim
    checkpoint = ensure_model(cfg)
    fid = fidelity(cfg, checkpoint)
    report = {"fidelity": fid, "agreement": agreement(cfg, checkpoint)} | throughput(cfg, checkpoint)
    marks = [h for h in (1, 2, 4, 8, 16, 32, 64) if h <= fid["horizon"]] + [fid["horizon"]]
    report |= {
        "pearson_r": report["agreement"]["pearson_r"],
        "mmrv": report["agreement"]["mmrv"],
        "n_policies": len(report["agreement"]["policies"]),
        "n_learned": len(report["agreement"]["learned"]),
        "learned_inside_mujoco_interval": report["agreement"]["learned_inside_mujoco_interval"],
        "psnr_by_horizon": {str(h): fid["psnr"][h - 1] for h in sorted(set(marks))},
        "ssim_by_horizon": {str(h): fid["ssim"][h - 1] for h in sorted(set(marks))},
        "episodes_per_task": bcfg.episodes,
        **stamp("python -m bench.neural_sim " + " ".join(sys.argv[1:])),
    }
    out = Path(bcfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(report, indent=1) + "\n")
    plot(report, Path(bcfg.figure))
    keys = (
        "pearson_r",
        "mmrv",
        "n_policies",
        "n_learned",
        "learned_inside_mujoco_interval",
        "psnr_by_horizon",
        "neural_steps_per_s",
        "mujoco_steps_per_s",
    )
    print(json.dumps({k: report[k] for k in keys}, indent=1))
    print(f"wrote {out} and {bcfg.figure}")


if __name__ == "__main__":
    main()
