"""What trained image policies generalize to, offline: their chunks and waypoint maps on demos none of them
trained on (the data-efficiency runs see the first n demos; the last ones are unseen by all of them).

    python -m bench.heldout_demos outputs/results/policy/ours-demos25 outputs/results/policy/scratch_fm-demos25 \
        --first-held-out 150 --out reports/experiment/heldout_demos.json

Per policy folder (its `pretrained_model`), on a fixed sample of frames of the held-out demos:
- fm_loss: the flow-matching loss (fixed time and noise draws);
- chunk_skill: 1 - the error of the first n_action_steps actions decoded with `--steps` Euler steps from
  fixed noise / that of the constant predictor (the demos' mean action), over the dimensions it does not
  already get right (policies.train_policy.chunk_skill);
- waypoint_close_cm / waypoint_open_cm: RMS distance on the table between where the hand was at the next
  gripper close / open and the waypoint map's peak.
"""

import argparse
import sys
from pathlib import Path

import torch

from bench.common import compose_config, stamp, write_report
from data.chunks import EpisodeBank
from policies.train_policy import (
    Waypoints,
    calibrated_camera,
    held_out_rows,
    held_out_scores,
    make_batch,
    waypoint_errors_cm,
)
from policies.vipra import make_policy
from policies.vipra.configuration_vipra import ACTION_KEY, STATE_KEY
from policies.vipra.modeling_vipra import WAYPOINT_KEY, WAYPOINT_PAD_KEY


def held_out_bank(demos: str, image_key: str, first: int) -> EpisodeBank:
    bank = EpisodeBank.load(demos, image_key, [ACTION_KEY, STATE_KEY])
    if not 0 < first < len(bank.episodes):
        raise ValueError(
            f"--first-held-out must be in 1..{len(bank.episodes) - 1} (demos in {demos}), got {first}"
        )
    return bank.subset(bank.episodes[first:])


def score(folder: Path, bank: EpisodeBank, rows: torch.Tensor, cfg, steps: int) -> dict[str, float]:
    processed = make_policy(folder / "pretrained_model", num_inference_steps=steps)
    policy = processed.policy.eval()
    if policy.config.waypoint_weight <= 0:
        raise ValueError(f"{folder} has no waypoint maps: this probe scores image policies with them")
    camera = calibrated_camera(cfg)
    waypoints = Waypoints.of(bank, policy.config.binary_action_dims[0], camera, policy.config.hand_anchor)
    batch = make_batch(bank, rows, policy.config.chunk_size, cfg.task.image_key, 0, None, waypoints)
    labels = {k: batch.pop(k) for k in (WAYPOINT_KEY, WAYPOINT_PAD_KEY)}  # around the preprocessor
    batch = processed.preprocessor(batch) | labels
    scores = held_out_scores(policy, batch) | waypoint_errors_cm(
        policy, batch, waypoints.points[rows], camera
    )
    return {k: float(v) for k, v in scores.items() if not k.startswith("chunk_error_ratio")}


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policies", nargs="+", type=Path, help="trained policy run folders")
    parser.add_argument("--demos", default="outputs/results/datasets/demos")
    parser.add_argument("--first-held-out", type=int, default=150, help="demos from this one on are scored")
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--steps", type=int, default=1, help="Euler steps for the decoded chunks")
    parser.add_argument("--out", type=Path, default=Path("reports/experiment/heldout_demos.json"))
    args = parser.parse_args(argv)
    cfg = compose_config(["experiment=results"])
    bank = held_out_bank(args.demos, cfg.task.image_key, args.first_held_out)
    rows = held_out_rows(bank, args.frames, seed=0)
    report = {"held_out_demos": len(bank.episodes), "frames": len(rows), "euler_steps": args.steps}
    for folder in args.policies:
        report[folder.name] = score(folder, bank, rows, cfg, args.steps)
        print(folder.name, {k: round(v, 3) for k, v in report[folder.name].items()})
    report |= stamp("python -m bench.heldout_demos " + " ".join(argv))
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
