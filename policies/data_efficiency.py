"""What video buys in demos: `ours` and `scratch_fm` finetuned on the first n demos for each n in
`data_efficiency.demos`, one seed each, evaluated in visual matching (make data-efficiency).

    python -m policies.data_efficiency experiment=data_efficiency

It shares `make results`' run folder (outputs/results): its datasets, its pretrained backbone and, for n =
every demo (data.demos.episodes), its seed-0 runs and their evaluations; whatever is missing it makes with
the same commands as `policies.pipeline`. Each run goes to run_dir/policy/<policy>-demos<n>, each evaluation
to run_dir/eval/<policy>-demos<n>; finished stages are skipped, so an interrupted run resumes, and the minutes
of every segment add up in run_dir/data_efficiency_time.json.

Writes `data_efficiency.out` (`{policy: {n_demos: success}}`, fractions, beside `ci95` (Wilson 95%) and
`episodes` keyed the same way, `episodes_per_task`, `wall_minutes`, `command`, `commit`) and a plot of success
against demos.
"""

import json
import sys
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from policies.pipeline import finetuning_overrides, run_plan, stage_finished
from sim.metrics import wilson_interval
from sim.reporting import stamp, write_atomic

POLICIES = ("ours", "scratch_fm")
TIME_FILE = "data_efficiency_time.json"
PROTOCOL = "visual_matching"


def run_name(policy: str, n: int, cfg: DictConfig) -> str:
    """make results' seed-0 run for every demo; <policy>-demos<n> for fewer."""
    return policy if n == cfg.data.demos.episodes else f"{policy}-demos{n}"


def demo_counts(cfg: DictConfig) -> list[int]:
    counts = [int(n) for n in cfg.data_efficiency.demos]
    every = int(cfg.data.demos.episodes)
    if len(set(counts)) != len(counts) or not all(1 <= n <= every for n in counts):
        raise ValueError(
            f"data_efficiency.demos must be distinct counts in [1, data.demos.episodes={every}], got {counts}"
        )
    return sorted(counts)


def stages(cfg: DictConfig, base: list[str]) -> list[tuple[str, list[str]]]:
    """The (module, args) commands still to run: datasets, the backbone, every finetune, every evaluation."""
    run_dir, de = Path(cfg.run_dir), cfg.data_efficiency
    unknown = [p for p in de.policies if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown policies {unknown} for the data-efficiency curve; known: {list(POLICIES)}")
    out: list[tuple[str, list[str]]] = []
    if not (Path(cfg.data.root) / cfg.data.video.name / "meta" / "info.json").is_file():
        out.append(("data.generate", base))
    backbone_dir = run_dir / "backbone" / "ours"  # policies.pipeline's: the one make results pretrains
    if "ours" in de.policies:
        out.append(("world_model.backbone.train", [*base, f"train.backbone.out_dir={backbone_dir}"]))
    evaluations = []
    for policy in de.policies:
        backbone = f"train.policy.backbone={backbone_dir if policy == 'ours' else 'null'}"
        for n in demo_counts(cfg):
            name = run_name(policy, n, cfg)
            subset = [] if name == policy else [f"train.policy.demos={n}"]
            policy_dir = run_dir / "policy" / name
            args = [
                *base,
                backbone,
                f"train.policy.seed={de.seed}",
                f"train.policy.out_dir={policy_dir}",
                *finetuning_overrides(cfg, policy),
                *subset,
            ]
            out.append(("policies.train_policy", args))
            evaluations.append(("sim.evaluate", evaluation_args(cfg, base, policy, name)))
    return [stage for stage in [*out, *evaluations] if not stage_finished(stage)]


def evaluation_args(cfg: DictConfig, base: list[str], policy: str, name: str) -> list[str]:
    """make results' own evaluation for its runs (both protocols, its episodes); visual matching at
    data_efficiency.episodes_per_task for the others."""
    run_dir = Path(cfg.run_dir)
    args = [*base, f"eval.policies=[{policy}]", f"eval.report_dir={run_dir / 'eval' / name}"]
    args.append(f"policies.{policy}.path={run_dir / 'policy' / name / 'pretrained_model'}")
    if name != policy:
        episodes = cfg.data_efficiency.episodes_per_task
        args += [
            f"eval.protocols=[{PROTOCOL}]",
            f"eval.episodes_per_task={episodes}",
            "eval.save_videos=false",
        ]
    return args


def gather(cfg: DictConfig) -> dict:
    """{policy: {n: success}} from each evaluation's results.json, with "ci95" (Wilson 95%) and "episodes"
    keyed the same way."""
    run_dir, success, ci95, episodes = Path(cfg.run_dir), {}, {}, {}
    for policy in cfg.data_efficiency.policies:
        success[policy], ci95[policy], episodes[policy] = {}, {}, {}
        for n in demo_counts(cfg):
            path = run_dir / "eval" / run_name(policy, n, cfg) / "results.json"
            if not path.is_file():
                raise FileNotFoundError(
                    f"no evaluation at {path}: run python -m policies.data_efficiency first"
                )
            tasks = json.loads(path.read_text())["policies"][policy]["tasks"].values()
            cells = [task[PROTOCOL]["success"] for task in tasks]
            total = sum(c["n"] for c in cells)
            successes = int(round(sum(c["rate"] * c["n"] for c in cells)))
            success[policy][str(n)] = successes / total
            ci95[policy][str(n)] = list(wilson_interval(successes, total))
            episodes[policy][str(n)] = total
    return {**success, "ci95": ci95, "episodes": episodes}


def plot(table: dict, policies: list[str], path: Path) -> None:
    """Success against demos (log scale), Wilson 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.common import save_figure

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for policy in policies:
        n = np.array([int(k) for k in table[policy]])
        rate = 100 * np.array(list(table[policy].values()))
        low, high = (100 * np.array(list(table["ci95"][policy].values()))).T
        ax.errorbar(n, rate, yerr=[rate - low, high - rate], marker="o", capsize=3, label=policy)
    ax.set_xscale("log")
    ax.set_xticks(n, [str(k) for k in n])
    ax.set_xlabel("labelled demos (all tasks)")
    ax.set_ylabel("success, visual matching (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    if "data_efficiency" not in cfg:
        raise ValueError(
            "no data_efficiency config: run python -m policies.data_efficiency experiment=data_efficiency"
        )
    base = [a for a in sys.argv[1:] if not a.startswith(("data_efficiency.", "hydra."))]
    plan = stages(cfg, base)
    run_dir = Path(cfg.run_dir)
    print(f"data efficiency: {len(plan)} stages under {run_dir}")
    wall = run_plan(plan, run_dir, TIME_FILE)
    table = gather(cfg) | {
        "episodes_per_task": cfg.data_efficiency.episodes_per_task,
        "protocol": PROTOCOL,
        "seed": cfg.data_efficiency.seed,
        "wall_minutes": round(wall, 1),
        **stamp("python -m policies.data_efficiency " + " ".join(sys.argv[1:])),
    }
    out, policies = Path(cfg.data_efficiency.out), list(cfg.data_efficiency.policies)
    write_atomic(out, json.dumps(table, indent=1) + "\n")
    plot(table, policies, out.with_suffix(".png"))
    rows = {p: {n: f"{100 * r:.1f}" for n, r in table[p].items()} for p in policies}
    print(f"data efficiency (success % by demos): {rows}; {wall:.1f} min -> {out}")


if __name__ == "__main__":
    main()
