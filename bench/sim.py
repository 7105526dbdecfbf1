"""Simulator benchmark: rendered env steps per second and expert / random success.

    python -m bench.sim [--episodes 25] [--out reports/bench/sim.json]

Throughput uses uniformly random actions (the policy costs nothing), resets included; single-env
figures are the median of several 1,200-step runs (this machine varies by 10-20% between runs), with
every run listed. Success rates run through the evaluation harness in both protocols, with the
harness's seeds.
"""

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import stamp, write_atomic
from sim.env import TabletopEnv
from sim.evaluate import evaluate, make_vector_env
from sim.experts import RandomPolicy, ScriptedPolicy
from sim.tasks import PROTOCOLS, TASKS


def single_env_steps_per_s(image_size: int, steps: int = 1200, task: str = "carrot_on_plate") -> float:
    env = TabletopEnv(task, "variant_aggregation", image_size=image_size)
    rng = np.random.default_rng(0)
    env.reset(seed=0)  # the first reset creates the renderer: not part of the steady state
    start, done = time.perf_counter(), 0
    while done < steps:
        env.reset(seed=done)
        for _ in range(env.max_episode_steps):
            env.step(rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32))
        done += env.max_episode_steps
    rate = done / (time.perf_counter() - start)
    env.close()
    return rate


def vector_env_steps_per_s(
    num_envs: int, image_size: int = 64, rounds: int = 600, task: str = "carrot_on_plate"
) -> float:
    envs = make_vector_env(task, "variant_aggregation", num_envs, image_size)
    rng = np.random.default_rng(0)
    low, high = envs.single_action_space.low, envs.single_action_space.high
    envs.reset(seed=list(range(num_envs)))
    start = time.perf_counter()
    for i in range(rounds):
        if i % 60 == 0:
            envs.reset(seed=[i + k for k in range(num_envs)])
        envs.step(rng.uniform(low, high, (num_envs, 7)).astype(np.float32))
    rate = rounds * num_envs / (time.perf_counter() - start)
    envs.close()
    return rate


def success_table(results: dict, policy: str) -> dict:
    tasks = results["policies"][policy]["tasks"]
    return {t: {p: tasks[t][p]["success"]["rate"] for p in PROTOCOLS} for t in tasks}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--episodes", type=int, default=25, help="episodes per task per protocol for success rates"
    )
    parser.add_argument(
        "--num-envs", type=int, default=os.cpu_count() or 1, help="parallel envs (default: all cores)"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="single-env timing runs (the median is reported)"
    )
    parser.add_argument("--out", type=Path, default=Path("reports/bench/sim.json"))
    args = parser.parse_args()

    print("timing one env at 64x64 and 128x128, then vector envs ...", flush=True)
    runs_64 = [single_env_steps_per_s(64) for _ in range(args.repeats)]
    runs_128 = [single_env_steps_per_s(128) for _ in range(args.repeats)]
    render_64, render_128 = float(np.median(runs_64)), float(np.median(runs_128))
    vector_64 = vector_env_steps_per_s(args.num_envs)
    no_yaw = functools.partial(ScriptedPolicy, align_yaw=False)  # same expert, never turns its hand
    results = evaluate(
        {"expert": ScriptedPolicy, "expert_no_yaw": no_yaw, "random": RandomPolicy},
        list(TASKS),
        list(PROTOCOLS),
        args.episodes,
        args.num_envs,
        seed=1000,
    )
    expert, random = success_table(results, "expert"), success_table(results, "random")
    report = {
        "render_steps_per_s_64": round(render_64, 1),
        "render_steps_per_s_128": round(render_128, 1),
        "render_steps_per_s_64_runs": [round(r, 1) for r in runs_64],
        "render_steps_per_s_128_runs": [round(r, 1) for r in runs_128],
        "vector_steps_per_s_64": round(vector_64, 1),
        "vector_num_envs": args.num_envs,
        "expert_success": expert,
        "random_success": random,
        # How much the grasp depends on the approach: the expert without turning to the object's yaw.
        "expert_no_yaw_success": success_table(results, "expert_no_yaw"),
        "random_grasp": {
            t: {p: v[p]["grasp"]["rate"] for p in PROTOCOLS}
            for t, v in results["policies"]["random"]["tasks"].items()
        },
        "episodes_per_task": args.episodes,
        "targets": {
            "render_steps_per_s_64": ">= 500",
            "expert_success": ">= 0.9 everywhere",
            "random_success": "<= 0.1",
        },
        **stamp("python -m bench.sim " + " ".join(sys.argv[1:])),
    }
    write_atomic(args.out, json.dumps(report, indent=2) + "\n")
    expert_min = min(min(v.values()) for v in expert.values())
    random_max = max(max(v.values()) for v in random.values())
    print(f"wrote {args.out}")
    print(
        f"bench-sim: {render_64:.0f} steps/s @64, {render_128:.0f} @128, {vector_64:.0f} with {args.num_envs} envs @64; "
        f"expert success min {expert_min:.2f}, random success max {random_max:.2f} ({args.episodes} episodes per task x protocol)"
    )


if __name__ == "__main__":
    main()
