"""The results table of a pipeline run: every (policy, seed) evaluation under run_dir/eval gathered into
`eval.report_dir`/results.json, results.md and results.png, seeds averaged (and each kept).

    python -m policies.results experiment=results       # rewrite the table from the finished evaluations

results.json: `average_success[policy][protocol]` (mean over the policy's seeds), `per_seed[policy]
[protocol]` (one rate per seed), `seeds[policy]`, `per_task`, `grasp`, `runs` (each evaluation's own
entry, with its first-close distances), `training` (each run's steps, batch and minutes),
`episodes_per_task`, `flow_steps` and `finetuning` (the recipe's decoding and extra finetuning overrides),
`wall_minutes` (the whole pipeline, all segments), `command`, `commit`;
training_curves.png: every policy run's training losses.

    python -m policies.results experiment=results +curves_only=true   # the training curves alone
"""

import json
import sys
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from policies.pipeline import TIME_FILE, evaluations
from sim.evaluate import results_markdown
from sim.reporting import machine_line, stamp, write_atomic


def gather(cfg: DictConfig) -> dict:
    """The evaluations of cfg.pipeline.policies (each run_dir/eval/<run>/results.json), seeds averaged."""
    run_dir, runs, missing = Path(cfg.run_dir), {}, []
    for policy, seed, run in evaluations(cfg):
        path = run_dir / "eval" / run / "results.json"
        if not path.is_file():
            missing.append(str(path))
            continue
        runs[(policy, seed, run)] = json.loads(path.read_text())
    if missing:
        raise FileNotFoundError(f"evaluations not finished: {missing} (rerun the pipeline to make them)")
    episodes = {r["episodes_per_task"] for r in runs.values()}
    if len(episodes) != 1:
        raise ValueError(f"the evaluations ran different numbers of episodes per task: {sorted(episodes)}")
    table = {"average_success": {}, "per_seed": {}, "seeds": {}, "grasp": {}, "per_task": {}, "runs": {}}
    for (policy, seed, run), result in runs.items():
        entry = result["policies"][policy]
        table["runs"][run] = entry
        table["seeds"].setdefault(policy, []).append(seed)
        for protocol, average in entry["average"].items():
            table["per_seed"].setdefault(policy, {}).setdefault(protocol, []).append(average["success"])
            table["grasp"].setdefault(policy, {}).setdefault(protocol, []).append(average["grasp"])
        for task, per in entry["tasks"].items():
            for protocol, stats in per.items():
                rates = table["per_task"].setdefault(policy, {}).setdefault(task, {})
                rates.setdefault(protocol, []).append(stats["success"]["rate"])
    for policy, per in table["per_seed"].items():
        table["average_success"][policy] = {p: float(np.mean(v)) for p, v in per.items()}
        table["grasp"][policy] = {p: float(np.mean(v)) for p, v in table["grasp"][policy].items()}
        for task in table["per_task"][policy].values():
            task.update({p: float(np.mean(v)) for p, v in task.items()})
    table["episodes_per_task"] = episodes.pop()
    table["seed"] = next(iter(runs.values()))["seed"]
    return table


def training_record(cfg: DictConfig) -> dict:
    """Per trained run, what its training cost: steps, batch, learning rate and minutes (summary.json, or
    ACT's lerobot config)."""
    run_dir, record = Path(cfg.run_dir), {}
    for path in sorted((run_dir / "policy").glob("*/summary.json")):
        summary = json.loads(path.read_text())
        config = (
            OmegaConf.load(path.parent / "config.yaml") if (path.parent / "config.yaml").is_file() else None
        )
        tcfg = config.train.policy if config is not None else {}
        record[path.parent.name] = {
            "steps": summary.get("steps"),
            "batch_size": tcfg.get("batch_size"),
            "lr": config.model.policy.optimizer_lr if config is not None else None,
            "minutes": round(summary.get("minutes", 0.0), 2),
        }
    act = run_dir / "act" / "checkpoints" / "last" / "pretrained_model" / "train_config.json"
    if act.is_file():
        act_cfg = json.loads(act.read_text())
        record["lerobot_baseline"] = {
            "steps": act_cfg["steps"],
            "batch_size": act_cfg["batch_size"],
            "lr": act_cfg["policy"]["optimizer_lr"],
            "lr_backbone": act_cfg["policy"]["optimizer_lr_backbone"],
        }
    return record


def markdown(table: dict) -> str:
    """The headline table (mean over seeds [lowest, highest seed]) per protocol, then per task."""
    protocols = list(next(iter(table["per_seed"].values())))
    lines = [f"## Average success, {table['episodes_per_task']} episodes per task and protocol per seed", ""]
    lines.append(
        "| policy | seeds | " + " | ".join(p.replace("_", " ") for p in protocols) + " | grasp (VM) |"
    )
    lines.append("|---|---|" + "---|" * len(protocols) + "---|")
    for policy, per in table["per_seed"].items():
        cells = []
        for p in protocols:
            rates = per[p]
            spread = f" [{100 * min(rates):.1f}, {100 * max(rates):.1f}]" if len(rates) > 1 else ""
            cells.append(f"**{100 * np.mean(rates):.1f}**{spread}")
        grasp = table["grasp"][policy].get(protocols[0], 0.0)
        lines.append(f"| {policy} | {len(rates)} | " + " | ".join(cells) + f" | {100 * grasp:.0f} |")
    lines += ["", "## Per task (success %, mean over seeds)", ""]
    tasks = list(next(iter(table["per_task"].values())))
    for p in protocols:
        lines.append(f"| {p.replace('_', ' ')} | " + " | ".join(tasks) + " |")
        lines.append("|---|" + "---|" * len(tasks))
        for policy, per in table["per_task"].items():
            lines.append(f"| {policy} | " + " | ".join(f"{100 * per[t][p]:.0f}" for t in tasks) + " |")
        lines.append("")
    return "\n".join(lines)


def bar_chart(table: dict, path: Path) -> None:
    """Mean success per policy and protocol, a dot per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.common import save_figure

    names = list(table["per_seed"])
    protocols = list(table["per_seed"][names[0]])
    width = 0.8 / len(protocols)
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names) + 2), 3.6))
    for j, protocol in enumerate(protocols):
        x = np.arange(len(names)) + (j - (len(protocols) - 1) / 2) * width
        means = [100 * np.mean(table["per_seed"][n][protocol]) for n in names]
        ax.bar(x, means, width, label=protocol.replace("_", " "))
        for xi, n in zip(x, names, strict=True):
            rates = 100 * np.asarray(table["per_seed"][n][protocol])
            ax.scatter(np.full(len(rates), xi), rates, s=10, c="k", zorder=3)
    ax.set_xticks(np.arange(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("average success (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{table['episodes_per_task']} episodes per task and protocol; dots: seeds")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def scalar_series(tb_dir: Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one scalar of a run's TensorBoard log; empty where the run did not log it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return np.zeros(0), np.zeros(0)
    points = events.Scalars(tag)
    return np.array([p.step for p in points]), np.array([p.value for p in points])


def logged_runs(run_dir: Path) -> list[Path]:
    return sorted(p.parent for p in (run_dir / "policy").glob("*/tb"))


TRAIN_CURVES = {"train/fm_loss": "flow-matching loss", "train/waypoint_loss": "waypoint maps' cross-entropy"}


def training_curves(run_dir: Path, path: Path, window: int = 8, tags: dict[str, str] = TRAIN_CURVES) -> None:
    """Scalars (`tags`: tag -> title) of every policy run under run_dir/policy, a running mean over `window`
    logged points; by default the training losses: whether the runs had converged when they stopped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.common import save_figure

    runs = logged_runs(run_dir)
    if not runs:
        raise FileNotFoundError(f"no policy runs with a TensorBoard log under {run_dir / 'policy'}")
    fig, axes = plt.subplots(1, len(tags), figsize=(10, 3.6))
    colors = {"ours": "C0", "scratch_fm": "C1", "state_fm": "C2"}
    for run in runs:
        family = run.name.split("-seed")[0]
        for ax, tag in zip(axes, tags, strict=True):
            steps, values = scalar_series(run / "tb", tag)
            if len(values) >= window:
                smooth = np.convolve(values, np.ones(window) / window, mode="valid")
                ax.plot(steps[window - 1 :], smooth, color=colors.get(family, "C7"), lw=1, label=run.name)
    for ax, (tag, title) in zip(axes, tags.items(), strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_yscale("log" if tag.startswith("train/") else "linear")
        if tag.endswith("chunk_skill"):  # 1 - chunk error / the constant (mean) chunk's error
            ax.axhline(0, ls="--", c="k", lw=0.8, label="constant predictor")
    if axes[0].lines:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def write_results(cfg: DictConfig, wall_minutes: float | None, command: str) -> str:
    """results.json / .md / .png in cfg.eval.report_dir; returns the markdown."""
    table = gather(cfg)
    if wall_minutes is None:  # rewritten by hand: the pipeline's record
        time_file = Path(cfg.run_dir) / TIME_FILE
        wall_minutes = json.loads(time_file.read_text())["wall_minutes"] if time_file.is_file() else None
    table |= {
        "training": training_record(cfg),
        "flow_steps": cfg.eval.get("flow_steps"),  # Euler steps per chunk; None: each checkpoint's own
        "finetuning": {k: list(v) for k, v in cfg.pipeline.get("finetuning", {}).items()},
        "wall_minutes": None if wall_minutes is None else round(wall_minutes, 1),
        **stamp(command),
    }
    out = Path(cfg.eval.report_dir)
    text = markdown(table)
    wall = "unknown" if wall_minutes is None else f"{wall_minutes:.1f} min"
    steps = table["flow_steps"] or "the checkpoint's own"
    footer = (
        f"\nFlow policies decoded with {steps} Euler step(s) per chunk; extra finetuning overrides: "
        f"{table['finetuning'] or 'none'}.  \nWall time of the whole run: {wall}.  \nCommand: `{command}`  \n"
        f"Commit: `{table['commit']}`  \nMachine: {machine_line(table['machine'])}\n"
    )
    first_seeds = {run: entry for run, entry in table["runs"].items() if "-seed" not in run}
    detail = results_markdown({"episodes_per_task": table["episodes_per_task"], "policies": first_seeds})
    write_atomic(out / "results.json", json.dumps(table, indent=1) + "\n")
    write_atomic(out / "results.md", f"{text}\n## First seed of each policy, per task\n\n{detail}\n{footer}")
    bar_chart(table, out / "results.png")
    if logged_runs(Path(cfg.run_dir)):
        training_curves(Path(cfg.run_dir), out / "training_curves.png")
    return text + footer


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Rewrite the table from the finished evaluations; with +curves_only=true only the training curves."""
    if cfg.get("curves_only"):
        training_curves(Path(cfg.run_dir), Path(cfg.eval.report_dir) / "training_curves.png")
        return
    print(write_results(cfg, None, "python -m policies.results " + " ".join(sys.argv[1:])))


if __name__ == "__main__":
    main()
