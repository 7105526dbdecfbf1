"""Where a policy's grasp waypoint lands on the table, scene factor by factor (sim.variant_factors'
settings): the close map's peak seen through the calibration (what the decoder reads), and with the hand
anchor also that point moved by the anchor's offset, against the object to pick; and how far the hand map
is from the hand's true pixel (projected through the scene's own, possibly moved, camera).

Frames: the scripted expert's approach, 0-11 steps into each episode (before it closes), `--scenes`
seeded scenes per task and setting.

    python -m bench.anchor_errors outputs/r14/policy/ours_cotrain_anchor/pretrained_model \\
        --out reports/experiment/diagnosis/anchor_errors.json
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from bench.common import stamp, write_report
from policies.runner import ProcessedPolicy
from policies.vipra.configuration_vipra import STATE_KEY
from policies.vipra.processor_vipra import tokenize
from sim.env import TabletopEnv
from sim.experts import ExpertController
from sim.tasks import TASKS, get_task
from sim.variant_factors import SETTINGS


def true_pixel(env: TabletopEnv, point: np.ndarray) -> np.ndarray:
    """(3,) metres -> (2,) pixels (u right, v down) through the scene's camera as MuJoCo renders it."""
    fovy = env.model.cam_fovy[env._camera]
    rel = env.data.cam_xmat[env._camera].reshape(3, 3).T @ (point - env.data.cam_xpos[env._camera])
    half = env.image_size / 2
    focal = half / np.tan(np.radians(fovy) / 2)
    return np.array([half + focal * rel[0] / -rel[2], half - focal * rel[1] / -rel[2]])


def approach_frames(task: str, setting: str, scenes: int, seed: int):
    """Per scene: frames t-1, t (uint8), the state, the object to pick's x, y and the hand's true pixel."""
    protocol, factors = SETTINGS[setting]
    env = TabletopEnv(task, protocol, variant_factors=factors)
    rng = np.random.default_rng(seed)
    try:
        for i in range(scenes):
            obs, _ = env.reset(seed=seed + i)
            expert, prev = ExpertController(get_task(task)), obs["pixels"]["image"]
            for _ in range(int(rng.integers(0, 12))):
                action = expert.act(obs["agent_pos"], obs["environment_state"])
                if action[6] >= 0.5:  # about to close: stop before the grasp
                    break
                prev = obs["pixels"]["image"]
                obs, *_ = env.step(action)
            hand = obs["agent_pos"][:3].astype(float)
            yield (
                prev,
                obs["pixels"]["image"],
                obs["agent_pos"],
                obs["environment_state"][:2],
                true_pixel(env, hand),
            )
    finally:
        env.close()


@torch.no_grad()
def errors(policy: ProcessedPolicy, task: str, setting: str, scenes: int, seed: int) -> dict[str, list]:
    model, maps = policy.policy, policy.policy.waypoint_maps
    out = {"close_cm": [], "close_anchored_cm": [], "hand_px": []}
    for prev, frame, state, source, hand_px in approach_frames(task, setting, scenes, seed):
        frames = torch.from_numpy(np.stack([prev, frame])).permute(0, 3, 1, 2).float()[None] / 255
        batch = policy.preprocessor(
            {STATE_KEY: torch.from_numpy(state)[None], "task": [get_task(task).instruction]}
        )
        words = tokenize(batch["task"], model.backbone.cfg.vocab_size)
        fmap = model.backbone(frames, words).fmap
        _, points, _ = maps(fmap, model.backbone.word_embed(words), batch[STATE_KEY])  # (1, M, 2) in [-1, 1]
        close = maps.table(points[:, :2])[0, 0, :2].numpy()
        out["close_cm"].append(100 * float(np.linalg.norm(close - source)))
        if maps.hand_stats:
            offset = maps.hand_offset(points[:, -1], batch[STATE_KEY])[0, :2].numpy()
            out["close_anchored_cm"].append(100 * float(np.linalg.norm(close + offset - source)))
            seen = (points[0, -1].numpy() + 1) * model.backbone.cfg.image_size / 2
            out["hand_px"].append(float(np.linalg.norm(seen - hand_px)))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("policy", type=Path, help="a trained pretrained_model folder with waypoint maps")
    parser.add_argument("--scenes", type=int, default=25, help="scenes per task and setting")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/anchor_errors.json"))
    args = parser.parse_args(argv)
    policy = ProcessedPolicy.from_pretrained(args.policy)
    policy.policy.eval()
    if policy.policy.waypoint_maps is None or policy.policy.waypoint_maps.table is None:
        raise ValueError(f"{args.policy} has no waypoint maps seen on the table (waypoint_on_table)")
    report = {"median": {}, "policy": str(args.policy), "scenes_per_task": args.scenes}
    for setting in SETTINGS:
        pooled: dict[str, list] = {}
        for task in TASKS:
            for k, v in errors(policy, task, setting, args.scenes, args.seed).items():
                pooled.setdefault(k, []).extend(v)
        report["median"][setting] = {k: round(float(np.median(v)), 2) for k, v in pooled.items() if v}
        report["median"][setting]["close_within_2cm"] = round(
            float(np.mean(np.array(pooled["close_cm"]) <= 2)), 3
        )
        print(setting, report["median"][setting], flush=True)
    report |= stamp("python -m bench.anchor_errors " + " ".join(sys.argv[1:] if argv is None else argv))
    write_report(args.out, report)
    print(json.dumps(report["median"], indent=1))
    return report


if __name__ == "__main__":
    main()
