"""Generate the two datasets of the pipeline from the simulator, as LeRobotDataset v3:

(a) `demos`: labelled robot demonstrations by the noisy scripted expert (successful ones only),
    spread evenly over the tasks: image, state, object state, action, task text.
(b) `video`: actionless clips mixing robot play and a second embodiment (a floating hand) doing the
    tasks and task-free motions (push, wave, wander): image, embodiment id and task text, no action.

    python -m data.generate                          # default profile (100 demos, >= 2,000 clips)
    python -m data.generate data=quick data.root=/tmp/ds
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from data.dataset import (
    EXECUTED_ACTION_KEY,
    SCENE_SEED_KEY,
    create_dataset,
    demo_features,
    video_features,
)
from sim.env import TabletopEnv
from sim.experts import ExpertController, Phase, PlayController
from sim.tasks import get_task

EMBODIMENTS = ("widowx", "hand")
MAX_ATTEMPTS_PER_DEMO = 10
PLAY_INSTRUCTIONS = {
    "wander": "move around the table",
    "push": "push the {obj} across the table",
    "wave": "wave above the table",
}


@dataclass
class Episode:
    images: list[np.ndarray]
    states: list[np.ndarray]
    env_states: list[np.ndarray]
    actions: list[np.ndarray]  # the label: the controller's intended action (DART), else the executed one
    executed: list[np.ndarray]  # what the env was stepped with (replaying these rebuilds the episode)
    instruction: str
    success: bool
    seed: int


def rollout(env: TabletopEnv, controller, seed: int, max_steps: int, settle_steps: int | None = 3) -> Episode:
    """Run one episode of `max_steps`. With `settle_steps`, a task episode stops that many steps after
    the expert lets go and retreats (or, for an expert with `stop_on_success`, after the task succeeds);
    with None it runs to the horizon, where success is judged."""
    obs, info = env.reset(seed=seed)
    ep = Episode([], [], [], [], [], env.task_description, False, seed)
    retreat_steps = 0
    stop_on_success = getattr(controller, "stop_on_success", False)
    for _ in range(max_steps):
        action = controller.act(obs["agent_pos"], obs["environment_state"])
        ep.images.append(obs["pixels"]["image"])
        ep.states.append(obs["agent_pos"])
        ep.env_states.append(obs["environment_state"])
        ep.actions.append(getattr(controller, "intended", action))
        ep.executed.append(action)
        obs, _, _, _, info = env.step(action)
        retreat_steps += getattr(controller, "phase", None) == Phase.RETREAT or (
            stop_on_success and info["is_success"]
        )
        if settle_steps is not None and retreat_steps >= settle_steps:
            break
    ep.success = bool(info["is_success"])
    return ep


def generate_demos(cfg: DictConfig, task_cfg: DictConfig, root: Path) -> dict:
    """Successful noisy-expert demos, `cfg.episodes` in all, evenly over tasks and protocols.

    Each runs to the task's horizon (the expert retreats and holds after the release), so every state a
    policy meets before the last-step judgment has demos; the label is the expert's clean action."""
    tasks, protocols = list(task_cfg.tasks), list(cfg.protocols)
    rng = np.random.default_rng(cfg.seed)
    attempts = kept = 0
    features = demo_features(
        task_cfg.image_size,
        _metaworld().feature_names(task_cfg.get("env", {}).get("state", "hand_gripper"))
        if _is_metaworld(task_cfg)
        else None,
        lossless=cfg.get("lossless_images", True),
    )
    robot_type = "sawyer_metaworld" if _is_metaworld(task_cfg) else "widowx_sim"
    # Tabletop demos run to the horizon; Meta-World's keep stopping once the task is done.
    settle = 3 if _is_metaworld(task_cfg) else None
    with create_dataset(root, features, task_cfg.fps, robot_type) as ds:
        for i in tqdm(range(cfg.episodes), desc="demos", unit="ep"):
            task, protocol = tasks[i % len(tasks)], protocols[(i // len(tasks)) % len(protocols)]
            env = _env(task, protocol, task_cfg, "widowx")
            for _ in range(MAX_ATTEMPTS_PER_DEMO):  # failed demos are discarded, as a human would redo them
                attempts += 1
                controller = _video_controller(
                    "task",
                    task,
                    cfg.noise,
                    np.random.default_rng(rng.integers(2**31)),
                    task_cfg,
                    jitter=False,
                )
                ep = rollout(env, controller, int(cfg.seed) + attempts, env.max_episode_steps, settle)
                if ep.success:
                    break
            else:
                raise RuntimeError(
                    f"the expert failed {MAX_ATTEMPTS_PER_DEMO} times in a row on {task} ({protocol}, noise "
                    f"{cfg.noise}); lower data.demos.noise"
                )
            for img, state, env_state, action, executed in zip(
                ep.images, ep.states, ep.env_states, ep.actions, ep.executed, strict=True
            ):
                ds.add_frame(
                    {
                        "observation.images.image": img,
                        "observation.state": state,
                        "observation.environment_state": env_state,
                        "action": action,
                        EXECUTED_ACTION_KEY: executed,
                        SCENE_SEED_KEY: np.array([ep.seed], dtype=np.int64),
                        "task": ep.instruction,
                    }
                )
            ds.save_episode()
            kept += 1
        frames = ds.meta.total_frames
    return {"episodes": kept, "attempts": attempts, "frames": frames, "path": str(root)}


def _is_metaworld(task_cfg: DictConfig) -> bool:
    return task_cfg.get("suite", "tabletop") == "metaworld"


def _metaworld():
    from sim import metaworld  # imported only for Meta-World runs

    return metaworld


def _video_controller(
    kind: str, task: str, noise: float, rng: np.random.Generator, task_cfg: DictConfig, jitter: bool = True
):
    if _is_metaworld(task_cfg):
        return _metaworld().MetaWorldExpert(task, noise, rng)
    if kind == "task":
        return ExpertController(get_task(task), noise=noise, rng=rng, episode_jitter=jitter)
    return PlayController(mode=kind, rng=rng)


def _instruction(kind: str, env: TabletopEnv, controller) -> str:
    if kind == "task":
        return env.task_description
    pushed = (env.spec_task.source, env.spec_task.target)[controller.pushed]
    return PLAY_INSTRUCTIONS[kind].format(obj=pushed.replace("_", " "))


def generate_video(cfg: DictConfig, task_cfg: DictConfig, root: Path) -> dict:
    """Actionless episodes until they hold `cfg.min_clips` non-overlapping clips of `cfg.clip_len` frames."""
    tasks, protocols = list(task_cfg.tasks), list(cfg.protocols)
    if _is_metaworld(task_cfg) and (cfg.robot_fraction < 1 or cfg.play_fraction > 0):
        raise ValueError(
            "Meta-World has one embodiment and no play controllers: set data.video.robot_fraction=1 and "
            f"data.video.play_fraction=0 (got {cfg.robot_fraction} and {cfg.play_fraction})"
        )
    rng = np.random.default_rng(cfg.seed)
    clips, counts = 0, {e: 0 for e in EMBODIMENTS}
    progress = tqdm(total=cfg.min_clips, desc="video clips", unit="clip")
    robot_type = "sawyer_metaworld" if _is_metaworld(task_cfg) else "widowx_sim+hand"
    features = video_features(task_cfg.image_size, lossless=cfg.get("lossless_images", True))
    with create_dataset(root, features, task_cfg.fps, robot_type) as ds:
        i = 0
        while clips < cfg.min_clips:
            embodiment = EMBODIMENTS[int(rng.random() >= cfg.robot_fraction)]
            kind = "task" if rng.random() >= cfg.play_fraction else str(rng.choice(PlayController.MODES))
            task, protocol = tasks[i % len(tasks)], protocols[int(rng.integers(len(protocols)))]
            env = _env(task, protocol, task_cfg, embodiment)
            controller = _video_controller(
                kind,
                task,
                cfg.noise,
                np.random.default_rng(rng.integers(2**31)),
                task_cfg,
                jitter=cfg.get("episode_jitter", True),
            )
            steps = env.max_episode_steps if kind == "task" else cfg.play_steps
            settle = None if kind == "task" and cfg.get("full_horizon", False) else 3
            ep = rollout(env, controller, seed=int(cfg.seed) + i, max_steps=steps, settle_steps=settle)
            instruction = _instruction(kind, env, controller)
            for img in ep.images:
                ds.add_frame(
                    {
                        "observation.images.image": img,
                        "embodiment": np.array([EMBODIMENTS.index(embodiment)], dtype=np.int64),
                        "task": instruction,
                    }
                )
            ds.save_episode()
            new = len(ep.images) // cfg.clip_len
            clips, counts[embodiment], i = clips + new, counts[embodiment] + 1, i + 1
            progress.update(new)
        frames = ds.meta.total_frames
    progress.close()
    return {
        "episodes": i,
        "episodes_per_embodiment": counts,
        "clips": clips,
        "frames": frames,
        "path": str(root),
    }


_ENVS: dict[tuple, TabletopEnv] = {}


def _env(task: str, protocol: str, task_cfg: DictConfig, robot: str) -> TabletopEnv:
    """One env per (task, protocol, robot), reused: compiling a model and a renderer costs ~50 ms.
    The dataset's fps is the env's control rate."""
    options = dict(task_cfg.get("env", {}))  # the suite's own (Meta-World: camera, state)
    key = (task, protocol, task_cfg.image_size, task_cfg.fps, robot, tuple(sorted(options.items())))
    if key not in _ENVS and _is_metaworld(task_cfg):
        _ENVS[key] = _metaworld().MetaWorldEnv(task, protocol, image_size=task_cfg.image_size, **options)
    elif key not in _ENVS:
        _ENVS[key] = TabletopEnv(
            task, protocol, image_size=task_cfg.image_size, robot=robot, control_hz=task_cfg.fps
        )
    return _ENVS[key]


def close_envs() -> None:
    for env in _ENVS.values():
        env.close()
    _ENVS.clear()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    root = Path(cfg.data.root)
    # Check both destinations first, so a refusal does not come after minutes of work.
    for name in (cfg.data.demos.name, cfg.data.video.name):
        if (root / name).exists():
            raise FileExistsError(f"dataset path {root / name} already exists; refusing to overwrite it")
    try:
        demos = generate_demos(cfg.data.demos, cfg.task, root / cfg.data.demos.name)
        video = generate_video(cfg.data.video, cfg.task, root / cfg.data.video.name)
    finally:
        close_envs()
    print(
        f"demos: {demos['episodes']} episodes ({demos['frames']} frames, {demos['attempts']} expert attempts) -> {demos['path']}"
    )
    print(
        f"video: {video['episodes']} episodes {video['episodes_per_embodiment']}, {video['clips']} clips of "
        f"{cfg.data.video.clip_len} frames ({video['frames']} frames) -> {video['path']}"
    )
    print("command: python -m data.generate " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
