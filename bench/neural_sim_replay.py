"""Whose error a policy's imagined success is: its MuJoCo episodes replayed open loop in the neural
simulator's state model with the actions it took there, and judged -> reports/bench/neural_sim_replay.json.

    python -m bench.neural_sim_replay run_dir=outputs/results     # after make bench-neural-sim

Closed loop (make bench-neural-sim), a policy acts on the frames and states the simulator imagines.
Replayed, the state model and the judge get exactly the actions the policy took in MuJoCo. So the gap
between imagined and MuJoCo success splits in two:
- replayed - MuJoCo: the state model and the judge, under that policy's own actions;
- imagined - replayed: the policy acting otherwise on what the simulator shows it.
Per episode, `lenient` counts MuJoCo failures the replay calls successes, `strict` the reverse; for the
trained checkpoints each such episode is listed (`disagreements`) with the task's own placement test on the
imagined state, which tells the state model's share (the test agrees with the judge) from the judge's. The scenes
and seeding are the harness's (sim/evaluate.py: episode i of a task uses seed `seed + i`, torch's
generator seeded per wave), so the MuJoCo episodes are those make bench-neural-sim scored.
The simulator's own rollouts are replayed the same way, per controller kind, in training and held out:
how well the state model fits the episodes of a policy it was trained on, against one it never saw.
"""

import collections
import json
import sys
from pathlib import Path

import gymnasium as gym
import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from bench.common import stamp, write_atomic
from bench.neural_sim import ensure_model
from data.chunks import split_episodes
from data.generate_rollouts import KINDS_FILE, draw_kinds
from sim.evaluate import make_vector_env, obs_to_batch
from sim.features import FeatureMap
from sim.tasks import TaskSpec, get_task
from world_model.neural_sim.dynamics import ACTION, SUCCESS, world_columns
from world_model.neural_sim.simulator import NeuralSim, load_neural_sim
from world_model.neural_sim.train import load_rollouts


def world_of(obs: dict) -> np.ndarray:
    """Vector-env observation -> raw world states (N, 15): robot state and object poses."""
    return np.concatenate([obs["agent_pos"], obs["environment_state"]], axis=-1)


def record_episodes(policy, envs: gym.vector.VectorEnv, episodes: int, max_steps: int, seed: int) -> dict:
    """Run `episodes` episodes as the harness does; per episode the first and last world states (E, 15),
    the actions (E, T, 7) and the env's verdict at the last step (E,)."""
    first, last, actions, success = [], [], [], []
    n = envs.num_envs
    for start in range(0, episodes, n):
        obs, _ = envs.reset(seed=[seed + start + i for i in range(n)])
        torch.manual_seed(seed + start)
        policy.reset()
        if start == 0:
            match = FeatureMap(policy, obs_to_batch(obs))
        keep = min(n, episodes - start)
        first.append(world_of(obs)[:keep])
        taken = []
        for _ in range(max_steps):
            with torch.inference_mode():
                action = policy.select_action(match(obs_to_batch(obs)))
            action = np.asarray(torch.as_tensor(action).cpu(), dtype=np.float32)
            obs, _, _, _, info = envs.step(action)
            taken.append(action[:keep])
        last.append(world_of(obs)[:keep])
        actions.append(np.stack(taken, axis=1))
        success.append(np.asarray(info["is_success"][:keep], dtype=bool))
    keys = ("first", "last", "actions", "success")
    return {k: np.concatenate(v) for k, v in zip(keys, (first, last, actions, success), strict=True)}


def yaw_matrix(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def placed(task: TaskSpec, world: np.ndarray) -> bool:
    """The task's placement test (the release is not checked) on a raw world state (15,): the source
    object's x, y, z, yaw at 7:11, the target's at 11:15."""
    return task.is_placed(world[7:10], yaw_matrix(world[10]), world[11:14], yaw_matrix(world[14]))


def disagreements(task: TaskSpec, run: dict, imagined: np.ndarray, verdict: np.ndarray) -> list[dict]:
    """The episodes whose replayed verdict differs from MuJoCo's: how far the object moved in MuJoCo, how
    far the imagined object ends from MuJoCo's, and whose error it is: `state` when the task's own test on
    the imagined state agrees with the judge, else `judge`."""
    found = []
    for i in np.nonzero(verdict != run["success"])[0]:
        real, imag, test = run["last"][i], imagined[i], placed(task, imagined[i])
        found.append(
            {
                "task": task.name,
                "episode": int(i),
                "kind": "lenient" if verdict[i] else "strict",
                "object_moved_cm": round(float(np.linalg.norm(real[7:10] - run["first"][i][7:10])) * 100, 1),
                "object_error_cm": round(float(np.linalg.norm(imag[7:10] - real[7:10])) * 100, 1),
                "cause": "state" if test == bool(verdict[i]) else "judge",
            }
        )
    return found


@torch.no_grad()
def replay(sim: NeuralSim, first: np.ndarray, actions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Actions (E, T, 7) from first world states (E, 15), open loop in the state model -> the last
    imagined world states (E, 15) and the judge's verdicts on them (E,) bool."""
    world, actions = torch.as_tensor(first).float(), torch.as_tensor(actions).float()
    last_action = torch.zeros_like(actions[:, 0])  # zeros before the first step, as in training
    for t in range(actions.shape[1]):
        action = sim.clip_action(actions[:, t])
        world = sim.step_state(world, action, last_action)
        last_action = action
    return world, sim.judge_state(world)["success"] > 0.5


def replay_rollouts(sim: NeuralSim, cfg: DictConfig) -> dict:
    """The simulator's training rollouts replayed from their first states with their actions, against the
    sim's verdict at their last frame: per controller kind, episodes trained on and held out."""
    tcfg = cfg.train.neural_sim
    record = json.loads((Path(tcfg.dataset) / KINDS_FILE).read_text())
    kinds = [kind.name for kind, _ in draw_kinds(OmegaConf.create(record))]  # by episode index
    bank = load_rollouts(tcfg.dataset, image_key=None)  # the state model replays no frames
    _, held_out = split_episodes(len(bank.episodes), tcfg.val_fraction, tcfg.seed)  # the split of training
    held_out = {bank.episodes[i] for i in held_out}
    world, actions = world_columns(bank), bank.columns[ACTION]
    found: dict[str, dict[str, list]] = {}
    for start in tqdm(torch.unique(bank.episode_start).tolist(), desc="replayed rollouts", unit="ep"):
        end, episode = int(bank.episode_end[start]), int(bank.episode_index[start])
        verdict = replay(sim, world[start : start + 1], actions[start:end][None])[1]
        split = "held_out" if episode in held_out else "training"
        pairs = found.setdefault(kinds[episode], {}).setdefault(split, [])
        pairs.append((bool(bank.columns[SUCCESS][end] > 0.5), bool(verdict[0])))
    return {
        kind: {split: split_gap(*np.array(pairs).T) for split, pairs in sorted(splits.items(), reverse=True)}
        for kind, splits in found.items()
    }


def split_gap(mujoco: np.ndarray, replayed: np.ndarray) -> dict:
    return {
        "mujoco": float(mujoco.mean()),
        "replayed": float(replayed.mean()),
        "lenient": int((replayed & ~mujoco).sum()),  # MuJoCo failures the replay calls successes
        "strict": int((mujoco & ~replayed).sum()),
        "episodes": len(mujoco),
    }


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    bcfg = cfg.bench_neural_sim
    sim = load_neural_sim(ensure_model(cfg))  # the simulator make bench-neural-sim judged (refused if stale)
    nodes = {**bcfg.policies, **bcfg.controls}
    nodes = {k: v for k, v in nodes.items() if v.get("path") is None or Path(v["path"]).exists()}
    tasks = list(cfg.task.tasks)
    learned = [n for n, node in nodes.items() if node.get("path") is not None]
    found = {name: {"mujoco": [], "replayed": [], "disagreements": []} for name in nodes}
    with tqdm(total=len(nodes) * len(tasks) * bcfg.episodes, desc="replayed episodes", unit="ep") as bar:
        for task in tasks:
            spec = get_task(task)
            envs = make_vector_env(task, bcfg.protocol, bcfg.num_envs, cfg.task.image_size)
            try:
                for name, node in nodes.items():
                    bar.set_postfix_str(f"{name} {task}")
                    run = record_episodes(
                        instantiate(node)(task=task), envs, bcfg.episodes, spec.max_steps, bcfg.seed
                    )
                    imagined, verdict = (x.numpy() for x in replay(sim, run["first"], run["actions"]))
                    found[name]["mujoco"].append(run["success"])
                    found[name]["replayed"].append(verdict)
                    if name in learned:
                        found[name]["disagreements"] += disagreements(spec, run, imagined, verdict)
                    bar.update(bcfg.episodes)
            finally:
                envs.close()
    imagined, imagined_at = {}, None
    if Path(bcfg.out).exists():  # make bench-neural-sim's closed-loop figures, on the same scenes
        report = json.loads(Path(bcfg.out).read_text())
        if report["episodes_per_task"] == bcfg.episodes:
            imagined = report["agreement"]["success_neural"] | closed_loop_controls(bcfg)
            imagined_at = report["commit"]
    policies = {
        name: split_gap(np.concatenate(v["mujoco"]), np.concatenate(v["replayed"]))
        | ({"imagined": imagined[name]} if name in imagined else {})
        | ({"disagreements": v["disagreements"]} if name in learned else {})
        for name, v in found.items()
    }
    rollouts = replay_rollouts(sim, cfg)
    out = Path(bcfg.replay_out)
    causes = collections.Counter(
        f"{d['kind']}_{d['cause']}" for name in learned for d in policies[name]["disagreements"]
    )
    report = {
        "policies": policies,
        "summary": {  # over every policy: how far the replay is from MuJoCo; the trained ones' errors by cause
            "sum_abs_gap": sum(abs(p["replayed"] - p["mujoco"]) for p in policies.values()),
            "lenient": sum(p["lenient"] for p in policies.values()),
            "strict": sum(p["strict"] for p in policies.values()),
            "learned_disagreements": dict(sorted(causes.items())),
        },
        "rollouts": rollouts,
        "learned": learned,
        "imagined_from": imagined_at,  # the commit of the bench-neural-sim report the imagined rates are from
        "episodes_per_task": bcfg.episodes,
        **stamp("python -m bench.neural_sim_replay " + " ".join(sys.argv[1:])),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(report, indent=1) + "\n")
    print(f"{'policy':24s} MuJoCo  replayed  imagined  lenient  strict")
    for name, p in policies.items():
        shown = f"{p['imagined']:.3f}" if "imagined" in p else "  -  "
        print(
            f"{name:24s} {p['mujoco']:.3f}  {p['replayed']:.3f}     {shown}     {p['lenient']:3d}  {p['strict']:3d}"
        )
    print(f"\n{'trained checkpoint':24s} lenient: state  judge   strict: state  judge")
    for name in learned:
        count = collections.Counter((d["kind"], d["cause"]) for d in policies[name]["disagreements"])
        print(
            f"{name:24s} {count['lenient', 'state']:13d} {count['lenient', 'judge']:6d} "
            f"{count['strict', 'state']:14d} {count['strict', 'judge']:6d}"
        )
    print(f"sum over the policies of abs(replayed - MuJoCo): {report['summary']['sum_abs_gap']:.3f}")
    print(f"\n{'rollout kind':24s} {'split':9s} episodes  MuJoCo  replayed  lenient  strict")
    for kind, splits in rollouts.items():
        for split, p in splits.items():
            print(
                f"{kind:24s} {split:9s} {p['episodes']:8d}  {p['mujoco']:.3f}  {p['replayed']:.3f}     "
                f"{p['lenient']:3d}  {p['strict']:3d}"
            )
    print(f"wrote {out}")


def closed_loop_controls(bcfg: DictConfig) -> dict:
    path = Path(bcfg.controls_out)
    return json.loads(path.read_text())["success_neural"] if path.exists() else {}


if __name__ == "__main__":
    main()
