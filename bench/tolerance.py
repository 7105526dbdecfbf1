"""How precisely must an image policy know where the objects are? The scripted expert with an error in
its belief of the objects' poses, drawn once per episode, is an image policy that localizes that well
and does everything else perfectly: its success against the error is the localization a task needs.

    python -m bench.tolerance [--episodes 25]     # -> reports/bench/tolerance.json, reports/figures/tolerance.png

Settings: an x-y error of standard deviation 0-5 cm on the source and the target (each axis, so the RMS
x-y distance is sqrt(2) x that), a yaw error of 10 and 20 degrees, and the expert that never turns its
hand. Visual matching (the demos' protocol), the evaluation harness's seeds.
"""

import argparse
import functools
import json
import os
import sys
from pathlib import Path

import numpy as np

from bench.common import save_figure, stamp, write_report
from sim.evaluate import evaluate
from sim.experts import ScriptedPolicy
from sim.tasks import TASKS

POSE_ERRORS_CM = (0, 1, 2, 3, 5)
YAW_ERRORS_DEG = (10, 20)


def settings() -> dict:
    """Name -> the expert with that belief error."""
    out = {f"xy_{cm}cm": functools.partial(ScriptedPolicy, pose_noise=cm / 100) for cm in POSE_ERRORS_CM}
    out |= {
        f"yaw_{deg}deg": functools.partial(ScriptedPolicy, yaw_noise=np.radians(deg))
        for deg in YAW_ERRORS_DEG
    }
    out["no_yaw"] = functools.partial(ScriptedPolicy, align_yaw=False)
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for task in TASKS:
        ax.plot(
            POSE_ERRORS_CM, [report["success"][f"xy_{cm}cm"][task] for cm in POSE_ERRORS_CM], "o-", label=task
        )
    ax.plot(
        POSE_ERRORS_CM,
        [report["average"][f"xy_{cm}cm"] for cm in POSE_ERRORS_CM],
        "k--",
        lw=2,
        label="average",
    )
    ax.set_xlabel("belief error of the object positions, std per axis (cm)")
    ax.set_ylabel("expert success (visual matching)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=25, help="episodes per task and setting")
    parser.add_argument("--num-envs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("reports/bench/tolerance.json"))
    parser.add_argument("--figure", type=Path, default=Path("reports/figures/tolerance.png"))
    args = parser.parse_args(argv)
    results = evaluate(
        settings(), list(TASKS), ["visual_matching"], args.episodes, args.num_envs, seed=args.seed
    )
    success = {
        name: {task: v["visual_matching"]["success"]["rate"] for task, v in entry["tasks"].items()}
        for name, entry in results["policies"].items()
    }
    report = {
        "success": success,
        "average": {name: float(np.mean(list(rates.values()))) for name, rates in success.items()},
        "ci95": {
            name: {task: v["visual_matching"]["success"]["ci95"] for task, v in entry["tasks"].items()}
            for name, entry in results["policies"].items()
        },
        "episodes_per_task": args.episodes,
        "protocol": "visual_matching",
    } | stamp("python -m bench.tolerance " + " ".join(sys.argv[1:] if argv is None else argv))
    write_report(args.out, report)
    plot(report, args.figure)
    print(json.dumps(report["average"], indent=1))
    print(f"wrote {args.out} and {args.figure}")
    return report


if __name__ == "__main__":
    main()
