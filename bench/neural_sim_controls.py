"""Which part of the neural simulator misleads the trained checkpoints it judges: make bench-neural-sim's
agreement on three control policies -> reports/bench/neural_sim_controls.json.

    python -m bench.neural_sim_controls run_dir=outputs/results     # after make bench-neural-sim

- `state_fm` reads the state model's object poses and never a frame: its imagined success against
  MuJoCo's measures the state model and the judge under a trained flow policy's actions.
- `ours_seed1_seen` and `scratch_fm_seed1_seen` drove the simulator's training rollouts
  (conf/data/default.yaml): image policies it has seen, so a miss on them is not one of generalization.
If state_fm agrees and the image checkpoints do not, the frames are what misleads them.
"""

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from bench.common import stamp, write_atomic
from bench.neural_sim import agreement, ensure_model

KEPT = (
    "policies",
    "success_mujoco",
    "success_neural",
    "grasp_mujoco",
    "grasp_neural",
    "inside_mujoco_interval",
)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    bcfg = cfg.bench_neural_sim
    checkpoint = ensure_model(cfg)  # the simulator make bench-neural-sim judged with (refused if stale)
    found = agreement(cfg, checkpoint, bcfg.controls)
    report = {k: found[k] for k in KEPT} | {
        "episodes_per_task": bcfg.episodes,
        **stamp("python -m bench.neural_sim_controls " + " ".join(sys.argv[1:])),
    }
    out = Path(bcfg.controls_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(report, indent=1) + "\n")
    for name in found["policies"]:
        print(
            f"{name:24s} success MuJoCo {found['success_mujoco'][name]:.3f} neural {found['success_neural'][name]:.3f}"
            f" | grasp {found['grasp_mujoco'][name]:.3f} / {found['grasp_neural'][name]:.3f}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
