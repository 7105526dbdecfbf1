"""Labelled robot rollouts for the neural simulator, as a LeRobotDataset v3: episodes of the scripted
expert at several noise levels, the expert that does not turn to the object, random actions and, as
GE-Sim does, trained policies (a kind whose `policy` is a factory of the evaluation registry's form,
e.g. `{_target_: policies.vipra.make_policy, _partial_: true, path: ...}`), kept whether they succeed or
not, so the world model sees what failing looks like, and how the policies it will judge fail. Every
frame carries the sim's labels: `success` (the task's test on this frame) and `grasped_now` (both
fingers on the object).

    python -m data.generate_rollouts run_dir=outputs/results        # outputs/datasets/rollouts
    python -m data.generate_rollouts run_dir=outputs/results data.rollouts.episodes=20 data.rollouts.name=rollouts_small

The default kinds include make results' and make data-efficiency's checkpoints (under `run_dir`); a
missing one stops the run before its first episode.
"""

import hashlib
import json
import sys
import warnings
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from data.dataset import EXECUTED_ACTION_KEY, SCENE_SEED_KEY, create_dataset, demo_features
from data.generate import _env, close_envs
from sim.env import ACTION_HIGH, ACTION_LOW, TabletopEnv
from sim.evaluate import obs_to_batch
from sim.experts import ExpertController
from sim.features import FeatureMap
from sim.tasks import get_task


def rollout_features(image_size: int) -> dict:
    """The demos' features less the label split (here `action` is what the env was stepped with), plus
    the sim's per-step verdicts."""
    flag = {"dtype": "float32", "shape": (1,), "names": None}
    kept = {
        k: v for k, v in demo_features(image_size).items() if k not in (EXECUTED_ACTION_KEY, SCENE_SEED_KEY)
    }
    return kept | {"success": flag, "grasped_now": flag}


class UniformController:
    """Uniform random actions over the action box."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def act(self, obs: dict, instruction: str) -> np.ndarray:
        return self.rng.uniform(ACTION_LOW, ACTION_HIGH).astype(np.float32)


class ExpertRollout:
    """The scripted expert, from the privileged state (noise and yaw alignment per kind)."""

    def __init__(self, expert: ExpertController):
        self.expert = expert

    def act(self, obs: dict, instruction: str) -> np.ndarray:
        return self.expert.act(obs["agent_pos"], obs["environment_state"])


class PolicyRollout:
    """A trained policy (reset() / select_action(batch), LeRobot's contract) driving the env from what it
    reads, as sim.evaluate runs it: one env's observation batched as B=1."""

    def __init__(self, policy):
        self.policy, self.match = policy, None
        policy.reset()

    def act(self, obs: dict, instruction: str) -> np.ndarray:
        batch = obs_to_batch(
            {
                "pixels": {k: v[None] for k, v in obs["pixels"].items()},
                **{k: obs[k][None] for k in ("agent_pos", "environment_state")},
                "task": [instruction],
            }
        )
        if self.match is None:  # the policy's camera and state keys, checked once
            self.match = FeatureMap(self.policy, batch, hint=" (set task.image_size to the policy's)")
        with torch.inference_mode():
            action = self.policy.select_action(self.match(batch))
        action = action.cpu().numpy() if isinstance(action, torch.Tensor) else np.asarray(action)
        return action.astype(np.float32).reshape(-1)


def make_controller(kind: DictConfig, task: str, rng: np.random.Generator, loaded: dict | None = None):
    """A controller for one episode: act(obs, instruction) -> action. `loaded` keeps the trained policies
    built so far, (kind, task) -> policy, so a checkpoint loads once per run."""
    if not isinstance(kind.policy, str):
        loaded = {} if loaded is None else loaded
        if (kind.name, task) not in loaded:
            loaded[kind.name, task] = instantiate(kind.policy)(task=task)
        return PolicyRollout(loaded[kind.name, task])
    if kind.policy == "random":
        return UniformController(rng)
    if kind.policy != "expert":
        raise ValueError(
            f"rollout kind {kind.name!r}: policy {kind.policy!r} is not 'expert', 'random' or a policy "
            "factory ({_target_: ..., _partial_: true, ...})"
        )
    expert = ExpertController(
        get_task(task), noise=kind.noise, rng=rng, align_yaw=kind.get("align_yaw", True)
    )
    return ExpertRollout(expert)


def check_checkpoints(kinds: list) -> None:
    """Fail before the first episode, not hundreds in, when a trained policy's checkpoint is missing."""
    missing = [
        f"{k.name}: {k.policy.path}"
        for k in kinds
        if not isinstance(k.policy, str) and "path" in k.policy and not Path(k.policy.path).exists()
    ]
    if missing:
        raise FileNotFoundError(
            "rollout kinds name checkpoints that do not exist:\n  " + "\n  ".join(missing) + "\n"
            "train them first (make results data-efficiency, then run_dir=outputs/results), or drop these "
            "kinds from data.rollouts.kinds"
        )


KINDS_FILE = "rollout_kinds.json"  # beside the dataset's meta/: the controllers it was generated with


def checkpoint_fingerprints(kinds: list) -> dict[str, str]:
    """kind name -> a hash of its checkpoint's weight files: a retrained policy at the same path (a new
    make results) is another controller, though its kind reads the same."""
    out = {}
    for kind in kinds:
        if isinstance(kind.policy, str) or "path" not in kind.policy:
            continue
        files = sorted(Path(kind.policy.path).glob("*.safetensors"))
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.read_bytes())
        out[kind.name] = digest.hexdigest()[:16] if files else "missing"
    return out


def kinds_record(cfg: DictConfig) -> dict:
    """What identifies a generation: its episodes, seed, protocol, controller kinds (resolved) and the
    weights of the trained ones."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    record = {k: resolved[k] for k in ("episodes", "seed", "protocol", "kinds")}
    return record | {"checkpoints": checkpoint_fingerprints(list(cfg.kinds))}


def generated_with(root: str | Path) -> dict | None:
    """The record a rollouts folder was written with (`kinds_record`), None for a folder from before it."""
    path = Path(root) / KINDS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def check_generated_with(root: Path, cfg: DictConfig) -> None:
    """Refuse rollouts generated with other kinds, seed, count or checkpoint weights than `cfg` asks for
    (a stale folder), naming what differs; a folder from before the record is only warned about."""
    found, expected = generated_with(root), kinds_record(cfg)
    if found is None:
        warnings.warn(f"{root} has no {KINDS_FILE}: what generated it is unknown", stacklevel=2)
        return
    differs = [k for k in expected if found.get(k) != expected[k]]
    if differs:
        raise ValueError(
            f"{root} was generated with other {', '.join(differs)} than data.rollouts asks for "
            f"(the folder's: {json.dumps({k: found.get(k) for k in differs})[:400]}; asked: "
            f"{json.dumps({k: expected[k] for k in differs})[:400]}): delete it to generate it afresh"
        )


def record(env: TabletopEnv, controller, seed: int, ds) -> bool:
    """One full-length episode into `ds`; frame t holds the observation, labels and the action taken."""
    obs, info = env.reset(seed=seed)
    for _ in range(env.max_episode_steps):
        action = controller.act(obs, env.task_description)
        ds.add_frame(
            {
                "observation.images.image": obs["pixels"]["image"],
                "observation.state": obs["agent_pos"],
                "observation.environment_state": obs["environment_state"],
                "action": action,
                "success": np.array([info.get("is_success", False)], np.float32),
                "grasped_now": np.array([info.get("grasped_now", False)], np.float32),
                "task": env.task_description,
            }
        )
        obs, _, _, _, info = env.step(action)
    ds.save_episode()
    return bool(info["is_success"])


def draw_kinds(cfg: DictConfig) -> list[tuple[DictConfig, int]]:
    """The controller kind of each of `cfg.episodes` episodes, drawn with `cfg.kinds` weights, and the seed
    of its controller's noise: what `generate_rollouts` ran, and which episode a kind drove."""
    kinds = list(cfg.kinds)
    weights = np.array([k.weight for k in kinds], dtype=float)
    rng = np.random.default_rng(cfg.seed)
    drawn = []
    for _ in range(cfg.episodes):
        kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
        drawn.append((kind, int(rng.integers(2**31))))
    return drawn


def generate_rollouts(cfg: DictConfig, task_cfg: DictConfig, root: Path) -> dict:
    """`cfg.episodes` episodes, tasks in turn, each by a controller kind drawn with `cfg.kinds` weights."""
    tasks = list(task_cfg.tasks)
    check_checkpoints(list(cfg.kinds))
    successes: dict[str, list[bool]] = {k.name: [] for k in cfg.kinds}
    loaded: dict = {}
    with create_dataset(root, rollout_features(task_cfg.image_size), task_cfg.fps, "widowx_sim") as ds:
        for i, (kind, noise_seed) in enumerate(tqdm(draw_kinds(cfg), desc="rollouts", unit="ep")):
            task = tasks[i % len(tasks)]
            env = _env(task, cfg.protocol, task_cfg, "widowx")
            controller = make_controller(kind, task, np.random.default_rng(noise_seed), loaded)
            successes[kind.name].append(record(env, controller, int(cfg.seed) + i, ds))
        frames = ds.meta.total_frames
    (root / KINDS_FILE).write_text(json.dumps(kinds_record(cfg), indent=1) + "\n")
    rates = {k: f"{sum(v)}/{len(v)}" for k, v in successes.items()}
    return {"episodes": cfg.episodes, "frames": frames, "successes": rates, "path": str(root)}


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    root = Path(cfg.data.root) / cfg.data.rollouts.name
    try:
        out = generate_rollouts(cfg.data.rollouts, cfg.task, root)
    finally:
        close_envs()
    print(
        f"rollouts: {out['episodes']} episodes ({out['frames']} frames), successes {out['successes']} -> {out['path']}"
    )
    print("command: python -m data.generate_rollouts " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
