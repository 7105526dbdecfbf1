"""Merge evaluations run separately into one table: the same tasks, protocols, episodes and seed, so
every policy faced the same scenes (e.g. policies evaluated as soon as each finished training).

    python -m sim.merge reports/experiment outputs/eval/a/results.json outputs/eval/b/results.json \
        --order ours,scratch_fm,lerobot_baseline

With `--shards`, the inputs are the shards of one evaluation (`eval.shard.count` > 1): their episode
counts are added up per policy, task and protocol, and the intervals recomputed.

    python -m sim.merge --shards reports/eval/quick reports/eval/quick/shards/*/results.json

Writes results.json / results.md / results.png to the output folder, as sim.evaluate does; each
part's own command, commit and machine are kept under `parts`.
"""

import argparse
import json
import sys
from pathlib import Path

from sim.evaluate import add_averages, summarize_counts, write_report

SAME = ("episodes_per_task", "seed", "image_size")


def provenance(part: dict) -> dict:
    """What made one merged part: its stamp (sim.reporting.stamp), None where an older report lacks a key."""
    return {key: part.get(key) for key in ("command", "commit", "machine")}


def merge(parts: list[dict], order: list[str] | None = None) -> dict:
    first = parts[0]
    policies: dict = {}
    for part in parts:
        differ = {k: (first[k], part[k]) for k in SAME if part[k] != first[k]}
        if differ:
            raise ValueError(f"evaluations differ in {differ}: their scenes are not the same")
        for name, entry in part["policies"].items():
            if name in policies:
                raise ValueError(f"policy {name!r} appears in more than one evaluation")
            layout = {t: sorted(v) for t, v in entry["tasks"].items()}
            reference = next(iter(policies.values()), entry)
            if layout != {t: sorted(v) for t, v in reference["tasks"].items()}:
                raise ValueError(f"policy {name!r} was evaluated on other tasks or protocols: {layout}")
            policies[name] = entry
    if order:
        missing = [n for n in order if n not in policies]
        if missing:
            raise ValueError(
                f"--order names {missing}, which no evaluation holds; they hold {list(policies)}"
            )
        policies = {n: policies[n] for n in order} | {n: e for n, e in policies.items() if n not in order}
    merged = {k: first[k] for k in SAME} | {"policies": policies}
    merged["average_success"] = {
        name: {p: avg["success"] for p, avg in entry["average"].items()} for name, entry in policies.items()
    }
    merged["parts"] = [provenance(p) | {"policies": list(p["policies"])} for p in parts]
    return merged


def merge_shards(parts: list[dict]) -> dict:
    """One evaluation from its shards: every shard once, the same policies, tasks and protocols."""
    first = parts[0]
    count = first.get("shard", {}).get("count")
    indices = sorted(p.get("shard", {}).get("index", -1) for p in parts)
    if count is None or indices != list(range(count)) or any(p["shard"]["count"] != count for p in parts):
        raise ValueError(
            f"--shards needs each shard of one evaluation exactly once; got shard indices {indices} "
            f"of count {count} (a results.json without `shard` was not sharded)"
        )
    for part in parts:
        differ = {k: (first[k], part[k]) for k in SAME if part[k] != first[k]}
        layout = {n: {t: sorted(v) for t, v in e["tasks"].items()} for n, e in part["policies"].items()}
        if differ or layout != {
            n: {t: sorted(v) for t, v in e["tasks"].items()} for n, e in first["policies"].items()
        }:
            raise ValueError(f"shard {part['shard']['index']} is of another evaluation ({differ or layout})")
    parts = sorted(parts, key=lambda p: p["shard"]["index"])  # per-episode lists concatenate in order
    policies = {}
    for name, entry in first["policies"].items():
        tasks = {}
        for task, per_protocol in entry["tasks"].items():
            for protocol in per_protocol:
                stats = [p["policies"][name]["tasks"][task][protocol] for p in parts]
                tasks.setdefault(task, {})[protocol] = {
                    key: summarize_counts(
                        sum(round(s[key]["rate"] * s[key]["n"]) for s in stats),
                        sum(s[key]["n"] for s in stats),
                    )
                    for key in ("success", "grasp")
                }
                if all("first_close" in s for s in stats):  # per-episode lists
                    tasks[task][protocol]["first_close"] = {
                        key: [d for s in stats for d in s["first_close"][key]]
                        for key in stats[0]["first_close"]
                    }
        policies[name] = {"tasks": tasks}
    protocols = list(next(iter(next(iter(policies.values()))["tasks"].values())))
    merged = add_averages({k: first[k] for k in SAME} | {"policies": policies}, protocols)
    episodes = {
        st["success"]["n"] for e in policies.values() for t in e["tasks"].values() for st in t.values()
    }
    if episodes != {first["episodes_per_task"]}:
        raise ValueError(f"the shards hold {episodes} episodes per entry, not {first['episodes_per_task']}")
    merged["parts"] = [provenance(p) | {"shard": p["shard"]} for p in parts]
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("inputs", type=Path, nargs="+", help="results.json files of sim.evaluate")
    parser.add_argument("--order", default="", help="comma-separated policy order for the table")
    parser.add_argument("--shards", action="store_true", help="the inputs are shards of one evaluation")
    args = parser.parse_args()
    parts = [json.loads(p.read_text()) for p in args.inputs]
    merged = merge_shards(parts) if args.shards else merge(parts, [n for n in args.order.split(",") if n])
    print(write_report(merged, args.out_dir, "python -m sim.merge " + " ".join(sys.argv[1:])))
    print(f"wrote {args.out_dir / 'results.json'}")


if __name__ == "__main__":
    main()
