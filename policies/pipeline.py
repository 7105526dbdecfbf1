"""The main job: data -> latent actions -> backbone -> policy -> SIMPLER-style evaluation, for every
policy of the results table (ours, Scratch-FM, the LeRobot baseline, the ablations).

    python -m policies.pipeline experiment=demo          # make demo: quick profile, ours vs Scratch-FM
    python -m policies.pipeline experiment=full          # make experiment: the whole table (~3 h here)
    python -m policies.pipeline experiment=full 'pipeline.policies=[ours,scratch_fm]'

Each stage is its own entry point, run as a subprocess with the same experiment and overrides, so a
stage can be rerun by hand with the command printed before it. Runs live under `run_dir` (one folder
per stage); training jobs resume from their checkpoints and finished labels are kept, so rerunning
the pipeline after an interruption continues where it stopped. Which policy needs which runs:

    ours              lam -> labels -> backbone/ours -> policy/ours
    no_flow_loss      lam_no_flow -> labels -> backbone/no_flow_loss -> policy/no_flow_loss
    no_future_frame   lam -> labels -> backbone/no_future_frame (frame loss 0) -> policy/...
    robot_video_only  lam -> labels -> backbone/robot_video_only (robot episodes) -> policy/...
    hand_video_only   lam -> labels -> backbone/hand_video_only (hand episodes) -> policy/...
    scratch_fm        policy/scratch_fm (same network, no backbone checkpoint)
    lerobot_baseline  act (LeRobot's ACT through lerobot's trainer)
"""

import subprocess
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

# policy -> (latent action model run, backbone overrides); None: no pretraining.
PRETRAINING = {
    "ours": ("lam", []),
    "no_flow_loss": ("lam_no_flow", []),
    "no_future_frame": ("lam", ["train.backbone.loss.frame=0"]),
    "robot_video_only": ("lam", ["train.backbone.embodiment=robot"]),
    "hand_video_only": ("lam", ["train.backbone.embodiment=hand"]),
    "scratch_fm": None,
}
LAM_OVERRIDES = {"lam": [], "lam_no_flow": ["train.lam.loss.flow.weight=0"]}
EXTRA_EVAL = {"ours_few_step": "ours"}  # evaluated from another policy's run


def run(module: str, args: list[str]) -> None:
    cmd = [sys.executable, "-m", module, *args]
    print(f"\n$ {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"[{module}: {(time.perf_counter() - start) / 60:.1f} min]", flush=True)


def stages(cfg: DictConfig, base: list[str]) -> list[tuple[str, list[str]]]:
    """The (module, args) commands for the policies in cfg.pipeline.policies, in dependency order."""
    run_dir, video = Path(cfg.run_dir), f"{cfg.data.root}/{cfg.data.video.name}"
    wanted = list(cfg.pipeline.policies)
    unknown = [p for p in wanted if p not in PRETRAINING and p != "lerobot_baseline" and p not in EXTRA_EVAL]
    if unknown:
        raise ValueError(
            f"unknown policies {unknown}; known: {[*PRETRAINING, 'lerobot_baseline', *EXTRA_EVAL]}"
        )
    trained = {EXTRA_EVAL.get(p, p) for p in wanted}
    out: list[tuple[str, list[str]]] = []
    if not (Path(cfg.data.root) / cfg.data.video.name / "meta" / "info.json").is_file():
        out.append(("data.generate", base))
    lams = sorted({PRETRAINING[p][0] for p in trained if PRETRAINING.get(p)})
    for lam in lams:
        lam_dir = run_dir / lam
        out.append(("world_model.lam.train", [*base, f"train.lam.out_dir={lam_dir}", *LAM_OVERRIDES[lam]]))
        labels = lam_dir / "labels" / f"{cfg.data.video.name}.safetensors"
        if not labels.is_file():
            out.append(
                (
                    "world_model.lam.label",
                    [*base, f"label.checkpoint={lam_dir}", f"label.dataset={video}", f"label.out={labels}"],
                )
            )
    for name in (p for p in PRETRAINING if p in trained):
        if PRETRAINING[name] is None:
            backbone = ["train.policy.backbone=null"]
        else:
            lam, overrides = PRETRAINING[name]
            backbone_dir = run_dir / "backbone" / name
            out.append(
                (
                    "world_model.backbone.train",
                    [
                        *base,
                        f"train.lam.out_dir={run_dir / lam}",
                        f"train.backbone.out_dir={backbone_dir}",
                        *overrides,
                    ],
                )
            )
            backbone = [f"train.policy.backbone={backbone_dir}"]
        out.append(
            ("policies.train_policy", [*base, *backbone, f"train.policy.out_dir={run_dir / 'policy' / name}"])
        )
    if "lerobot_baseline" in trained:
        out.append(("policies.lerobot_baseline", [*base, f"lerobot_baseline.out_dir={run_dir / 'act'}"]))
    if cfg.pipeline.evaluate:
        out.append(("sim.evaluate", [*base, f"eval.policies=[{','.join(wanted)}]"]))
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    base = [a for a in sys.argv[1:] if not a.startswith(("pipeline.", "hydra."))]
    plan = stages(cfg, base)
    print(f"pipeline: {len(plan)} stages for {list(cfg.pipeline.policies)} under {cfg.run_dir}")
    start = time.perf_counter()
    for module, args in plan:
        run(module, args)
    print(
        f"\npipeline done in {(time.perf_counter() - start) / 60:.1f} min; table: {cfg.eval.report_dir}/results.md"
    )


if __name__ == "__main__":
    main()
