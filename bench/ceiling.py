"""The suite's ceiling (make bench-ceiling): what the demos can teach, against what the task allows.

    python -m bench.ceiling experiment=ceiling                       # ~30 min here -> reports/bench/ceiling.json
    python -m bench.ceiling experiment=ceiling bench_ceiling.seed=5000 bench_ceiling.episodes_per_task=20 \
        'eval.protocols=[visual_matching]' bench_ceiling.out=null   # a calibration run, on unused scenes

Generates the demos (data.demos, once per out_dir), trains `state_fm` on them with the policies'
trainer (policies.train_policy: the same decoder and flow matching as ours, a privileged-state context),
and evaluates through the harness, on the same scenes: state_fm executing 7 of its 14 actions (the image
policies' chunking), state_fm replanning every step (closed loop), the scripted expert and random.
It also replays demo episodes in the simulator and compares their stored frames with fresh renders.
"""

import functools
import json
import sys
import time
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, open_dict

from bench.common import save_figure, stamp, write_atomic
from data.dataset import load_metadata
from data.generate import close_envs, generate_demos
from data.replay import compare_with_renders
from policies.train_policy import PRETRAINED_DIR, train
from policies.vipra import make_policy
from sim.evaluate import evaluate, results_markdown
from sim.experts import RandomPolicy, ScriptedPolicy

ROWS = {  # report key -> policy name in the evaluation
    "state_fm_success": "state_fm",
    "state_fm_closed_loop_success": "state_fm_closed_loop",
    "expert_success": "scripted",
    "random_success": "random",
}


def ensure_demos(cfg: DictConfig, root: Path) -> float:
    """Generate the demos once per bench folder; returns the minutes it took (0 when they exist)."""
    if (root / "meta" / "info.json").is_file():
        return 0.0
    clock = time.perf_counter()
    try:
        generate_demos(cfg.data.demos, cfg.task, root)
    finally:
        close_envs()
    return (time.perf_counter() - clock) / 60


def train_state_fm(cfg: DictConfig, demos: Path, run: Path) -> float:
    """Train state_fm on `demos` into `run` (resuming a run that stopped); returns its minutes."""
    if cfg.model.policy.get("context") != "state":
        raise ValueError(
            "bench.ceiling trains the privileged-state policy: run it with experiment=ceiling "
            f"(model/policy=state_fm), got model.policy.context={cfg.model.policy.get('context')!r}"
        )
    if (run / PRETRAINED_DIR / "model.safetensors").is_file():
        summary = json.loads((run / "summary.json").read_text())
        return summary["minutes"]
    with open_dict(cfg):
        cfg.train.policy.dataset, cfg.train.policy.out_dir = str(demos), str(run)
    return train(cfg)["minutes"]


def rates(results: dict, name: str) -> dict:
    """{task: {protocol: success rate}} of one evaluated policy."""
    tasks = results["policies"][name]["tasks"]
    return {t: {p: v["success"]["rate"] for p, v in per.items()} for t, per in tasks.items()}


def frames_to_compare(demos: Path, minimum: int) -> list[int]:
    """The first episodes that together hold at least `minimum` frames."""
    meta = load_metadata(demos)
    if meta.total_frames < minimum:
        raise ValueError(f"{demos} holds {meta.total_frames} frames, fewer than the {minimum} to compare")
    ends = np.cumsum(meta.episodes["length"])
    return list(range(int(np.searchsorted(ends, minimum)) + 1))


def figure(report: dict, path: Path) -> None:
    """Success per task and protocol, one bar per row of the ladder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [k for k in ROWS if k in report]
    tasks = list(report[rows[0]])
    protocols = list(report[rows[0]][tasks[0]])
    fig, axes = plt.subplots(1, len(protocols), figsize=(5.5 * len(protocols), 3.6), squeeze=False)
    width = 0.8 / len(rows)
    for ax, protocol in zip(axes[0], protocols, strict=True):
        for j, row in enumerate(rows):
            x = np.arange(len(tasks)) + (j - (len(rows) - 1) / 2) * width
            values = [100 * report[row][t][protocol] for t in tasks]
            ax.bar(x, values, width, label=row.removesuffix("_success"))
        ax.set_xticks(np.arange(len(tasks)), [t.replace("_", "\n") for t in tasks], fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("success (%)")
        ax.set_title(f"{protocol.replace('_', ' ')}, {report['episodes_per_task']} episodes per task")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(rows), fontsize=8)  # below the bars
    fig.suptitle(f"suite ceiling, {report['demos']} demos, commit {report['commit']}", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    save_figure(fig, path)


def run(cfg: DictConfig, command: str) -> dict:
    bcfg = cfg.bench_ceiling
    out_dir = Path(bcfg.out_dir)
    demos, policy_run = out_dir / "demos", out_dir / "state_fm"
    generate_minutes = ensure_demos(cfg, demos)
    train_minutes = train_state_fm(cfg, demos, policy_run)
    path = policy_run / PRETRAINED_DIR
    policies = {
        "state_fm": functools.partial(make_policy, path),
        "state_fm_closed_loop": functools.partial(make_policy, path, n_action_steps=1),
        "scripted": ScriptedPolicy,
        "random": RandomPolicy,
    }
    unknown = sorted(set(bcfg.policies) - set(policies))
    if unknown:
        raise ValueError(f"bench_ceiling.policies names {unknown}; expected some of {list(policies)}")
    policies = {name: policies[name] for name in bcfg.policies}
    clock = time.perf_counter()
    results = evaluate(
        policies,
        list(cfg.task.tasks),
        list(cfg.eval.protocols),
        bcfg.episodes_per_task,
        cfg.eval.num_envs,
        bcfg.seed,
        cfg.task.image_size,
        control_hz=cfg.task.fps,
    )
    eval_minutes = (time.perf_counter() - clock) / 60
    episodes = frames_to_compare(demos, bcfg.frames_compared)
    worst, compared = compare_with_renders(demos, episodes, cfg.task.image_key)
    report = {key: rates(results, name) for key, name in ROWS.items() if name in policies}
    report |= {
        "average_success": results["average_success"],
        "grasp": {n: e["average"] for n, e in results["policies"].items()},
        "episodes_per_task": bcfg.episodes_per_task,
        "seed": bcfg.seed,
        "demos": int(cfg.data.demos.episodes),
        "frame_max_abs_error": worst,
        "frames_compared": compared,
        "train_minutes": train_minutes,
        "generate_minutes": generate_minutes,
        "eval_minutes": eval_minutes,
        **stamp(command),
    }
    report["table"] = results_markdown(results)
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    command = "python -m bench.ceiling " + " ".join(sys.argv[1:])
    report = run(cfg, command)
    bcfg = cfg.bench_ceiling
    out_dir = Path(bcfg.out_dir)
    write_atomic(out_dir / "ceiling.json", json.dumps(report, indent=2) + "\n")
    if bcfg.out:
        write_atomic(Path(bcfg.out), json.dumps(report, indent=2) + "\n")
        figure(report, Path(bcfg.figure))
    print(report["table"])
    summary = ", ".join(
        f"{name} {100 * np.mean(list(by_protocol.values())):.1f}%"
        for name, by_protocol in report["average_success"].items()
    )
    print(
        f"ceiling ({'/'.join(cfg.eval.protocols)} averaged): {summary}; {report['demos']} demos, state_fm "
        f"trained {report['train_minutes']:.1f} min; frames max error {report['frame_max_abs_error']} over "
        f"{report['frames_compared']} -> {bcfg.out or out_dir / 'ceiling.json'}"
    )


if __name__ == "__main__":
    main()
