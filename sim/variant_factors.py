"""Which part of variant aggregation costs a policy its success: the policies evaluated on the variant
scenes with one factor varied at a time (the others at the nominal scene), with none and with all of them
(the protocol itself), beside visual matching. Every setting uses the same episode seeds, so each scene
differs from the full variant one only in the factors switched off (sim.env.VARIANT_FACTORS).

    python -m sim.variant_factors experiment=results 'eval.policies=[ours,scratch_fm]' \\
        eval.report_dir=reports/experiment/diagnosis/variant_factors

-> variant_factors.{json,md,png} in eval.report_dir: average success per policy and setting, with the
mean of the tasks' Wilson intervals, and the command and commit.
"""

import json
import sys
from pathlib import Path

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from sim.env import VARIANT_FACTORS
from sim.evaluate import evaluate
from sim.reporting import stamp, write_atomic

# setting -> (protocol, the variant factors applied)
SETTINGS = {
    "visual_matching": ("visual_matching", VARIANT_FACTORS),
    "none": ("variant_aggregation", ()),
    **{factor: ("variant_aggregation", (factor,)) for factor in VARIANT_FACTORS},
    "all": ("variant_aggregation", VARIANT_FACTORS),
}


def measure(policies: dict, cfg: DictConfig, settings: dict = SETTINGS) -> dict:
    """{policy: {setting: {"success", "grasp", "ci95", "per_task"}}} over cfg.task.tasks."""
    out: dict[str, dict] = {}
    for setting, (protocol, factors) in settings.items():
        print(f"\n== {setting}: {protocol}, factors {list(factors)}", flush=True)
        results = evaluate(
            policies,
            list(cfg.task.tasks),
            [protocol],
            cfg.eval.episodes_per_task,
            cfg.eval.num_envs,
            cfg.eval.seed,
            cfg.task.image_size,
            control_hz=cfg.task.fps,
            env_kwargs={"variant_factors": list(factors)},
        )
        for name, entry in results["policies"].items():
            tasks = {t: v[protocol] for t, v in entry["tasks"].items()}
            out.setdefault(name, {})[setting] = {
                "success": entry["average"][protocol]["success"],
                "grasp": entry["average"][protocol]["grasp"],
                "ci95": [float(np.mean([t["success"]["ci95"][i] for t in tasks.values()])) for i in (0, 1)],
                "per_task": {t: v["success"]["rate"] for t, v in tasks.items()},
            }
    return out


def markdown(success: dict, episodes: int) -> str:
    settings = list(next(iter(success.values())))
    lines = [
        f"Average success % over the tasks ({episodes} episodes per task and setting; grasp % after the slash). "
        "Columns after visual matching: variant-aggregation scenes with only that factor varied.",
        "",
        "| policy | " + " | ".join(s.replace("_", " ") for s in settings) + " |",
        "|---|" + "---|" * len(settings),
    ]
    for name, row in success.items():
        cells = [f"{100 * row[s]['success']:.1f} / {100 * row[s]['grasp']:.0f}" for s in settings]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(success: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, settings = list(success), list(next(iter(success.values())))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(1.1 * len(settings) + 2, 3.6))
    for j, name in enumerate(names):
        rates = np.array([100 * success[name][s]["success"] for s in settings])
        lows = np.array([100 * success[name][s]["ci95"][0] for s in settings])
        highs = np.array([100 * success[name][s]["ci95"][1] for s in settings])
        x = np.arange(len(settings)) + (j - (len(names) - 1) / 2) * width
        err = np.clip([rates - lows, highs - rates], 0, None)
        ax.bar(x, rates, width, yerr=err, capsize=2, label=name)
    ax.set_xticks(np.arange(len(settings)), [s.replace("_", " ") for s in settings], rotation=20, ha="right")
    ax.set_ylabel("average success (%)")
    ax.set_ylim(0, 100)
    ax.set_title("variant aggregation, one factor at a time; bars: mean of per-task Wilson 95%")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    unknown = [n for n in cfg.eval.policies if n not in cfg.policies]
    if unknown:
        raise ValueError(
            f"eval.policies names {unknown}, which are not under `policies:`; known: {list(cfg.policies)}"
        )
    policies = {name: instantiate(cfg.policies[name]) for name in cfg.eval.policies}
    success = measure(policies, cfg)
    out_dir = Path(cfg.eval.report_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m sim.variant_factors " + " ".join(sys.argv[1:])
    report = {
        "success": success,
        "settings": {s: {"protocol": p, "factors": list(f)} for s, (p, f) in SETTINGS.items()},
        "episodes_per_task": cfg.eval.episodes_per_task,
        "seed": cfg.eval.seed,
        **stamp(command),
    }
    write_atomic(out_dir / "variant_factors.json", json.dumps(report, indent=1) + "\n")
    table = markdown(success, cfg.eval.episodes_per_task)
    write_atomic(
        out_dir / "variant_factors.md", f"{table}\nCommand: `{command}`  \nCommit: `{report['commit']}`\n"
    )
    bar_chart(success, out_dir / "variant_factors.png")
    print(table)


if __name__ == "__main__":
    main()
