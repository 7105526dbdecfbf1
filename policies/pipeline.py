"""The main job: data -> (latent actions) -> backbone -> policies -> SIMPLER-style evaluation -> the table,
for every policy of a results table (ours, Scratch-FM, the LeRobot baseline, state_fm, the expert, random,
the ablations).

    python -m policies.pipeline experiment=results       # make results: the headline table, 3 seeds
    python -m policies.pipeline experiment=demo          # make demo: quick profile, ours vs Scratch-FM
    python -m policies.pipeline experiment=full          # make experiment: the ablations
    python -m policies.pipeline experiment=results 'pipeline.policies=[ours,scratch_fm]'

Each stage is its own entry point, run as a subprocess with the same experiment and overrides, so a
stage can be rerun by hand with the command printed before it. Runs live under `run_dir`: a policy's
first seed in policy/<name>, its other seeds (`pipeline.seeds`) in policy/<name>-seed<k>, each
evaluation in eval/<run> (`policies.results` gathers them into `eval.report_dir`). Training resumes
from its checkpoints, finished labels and evaluations are kept, so rerunning the pipeline after an
interruption continues where it stopped; the minutes of every segment are summed in
run_dir/pipeline_time.json, so the table's wall time is the whole run's. An experiment adds finetuning
overrides per policy in `pipeline.finetuning` (make results: ours keeps its backbone's video loss on, as
ours_cotrain does). Which policy needs which runs:

    ours              backbone/ours (actionless video) -> policy/ours[-seed<k>] (make results: co-trained)
    no_change_map     backbone/no_change_map (change map off) -> policy/...
    no_future_frame   backbone/no_future_frame (frame loss 0) -> policy/...
    robot_video_only  backbone/robot_video_only (robot episodes) -> policy/...
    hand_video_only   backbone/hand_video_only (hand episodes) -> policy/...
    ours_latent       lam -> labels -> backbone/ours_latent (+ latent actions) -> policy/...
    ours_lam_supervised  lam_supervised (+ true actions of 6 demos) -> labels -> backbone/... -> policy/...
    ours_idm          idm (inverse dynamics from the finetuning demos) -> pseudo-action labels -> backbone/...
    ours_cotrain      backbone/ours -> policy/ours_cotrain[-seed<k>] (finetuned with the video loss kept on)
    scratch_fm        policy/scratch_fm[-seed<k>] (same network, no backbone checkpoint)
    state_fm          policy/state_fm (the privileged-state ceiling: model/policy=state_fm)
    lerobot_baseline  act (LeRobot's ACT through lerobot's trainer)
    scripted, random  evaluated as they are
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

# A backbone that also predicts the labels of the frames ahead (ViPRA's recipe: latent-action codes or
# latents; or an inverse dynamics model's pseudo-actions); the labels file is given by its labeller's run.
LATENT_ACTIONS = ["train.backbone.loss.action=1.0", "model.backbone.layers=1"]
# policy -> (labeller run or None, backbone overrides); None: no pretraining.
PRETRAINING = {
    "ours": (None, []),
    "no_change_map": (None, ["train.backbone.loss.change_map=0"]),
    "no_future_frame": (None, ["train.backbone.loss.frame=0"]),
    "robot_video_only": (None, ["train.backbone.embodiment=robot"]),
    "hand_video_only": (None, ["train.backbone.embodiment=hand"]),
    "ours_latent": ("lam", LATENT_ACTIONS),
    "ours_lam_supervised": ("lam_supervised", LATENT_ACTIONS),
    "ours_idm": ("idm", LATENT_ACTIONS),
    "scratch_fm": None,
}
# Variants finetuned otherwise from another policy's backbone: policy -> (whose backbone, finetuning overrides).
FINETUNING = {"ours_cotrain": ("ours", ["train.policy.cotrain.weight=1.0"])}
# labeller run -> (its package, overrides): lam_supervised reads the true actions of a few demos (LAOM);
# idm is trained on the finetuning demos' actions (VPT). Each package has a train and a label module.
LABELLERS = {
    "lam": ("world_model.lam", []),
    "lam_supervised": ("world_model.lam", ["train.lam.action_supervision.weight=1.0"]),
    "idm": ("world_model.idm", []),
}
CEILING = {"state_fm": ["model/policy=state_fm", "train/policy=state_fm", "train.policy.backbone=null"]}
UNTRAINED = ("scripted", "random")
EXTRA_EVAL = {"ours_few_step": "ours"}  # evaluated from another policy's runs
KNOWN = (*PRETRAINING, *FINETUNING, *CEILING, *UNTRAINED, "lerobot_baseline", *EXTRA_EVAL)
TIME_FILE = "pipeline_time.json"


def run(module: str, args: list[str]) -> None:
    cmd = [sys.executable, "-m", module, *args]
    print(f"\n$ {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"[{module}: {(time.perf_counter() - start) / 60:.1f} min]", flush=True)


def run_name(policy: str, seed: int, seeds: list[int]) -> str:
    """policy/<name> holds the first seed's run (the name the policy registry loads), the others a suffix."""
    return policy if seed == seeds[0] else f"{policy}-seed{seed}"


def seeds_of(cfg: DictConfig, policy: str) -> list[int]:
    """The finetuning seeds of a policy: every seed for the video policies, one for the rest."""
    seeds = [int(s) for s in cfg.pipeline.get("seeds", [0])]
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"pipeline.seeds must be distinct and non-empty, got {seeds}")
    trained = EXTRA_EVAL.get(policy, policy)
    return seeds if trained in PRETRAINING or trained in FINETUNING else seeds[:1]


def evaluations(cfg: DictConfig) -> list[tuple[str, int, str]]:
    """(policy, seed, run) of every evaluation of the table, in cfg.pipeline.policies' order."""
    out = []
    for policy in cfg.pipeline.policies:
        seeds = seeds_of(cfg, policy)
        out += [(policy, seed, run_name(policy, seed, seeds)) for seed in seeds]
    return out


def stages(cfg: DictConfig, base: list[str]) -> list[tuple[str, list[str]]]:
    """The (module, args) commands for the policies in cfg.pipeline.policies, in dependency order; an
    evaluation whose results exist already is left out."""
    run_dir, video = Path(cfg.run_dir), f"{cfg.data.root}/{cfg.data.video.name}"
    wanted = list(cfg.pipeline.policies)
    unknown = [p for p in wanted if p not in KNOWN]
    if unknown:
        raise ValueError(f"unknown policies {unknown}; known: {list(KNOWN)}")
    trained = {EXTRA_EVAL.get(p, p) for p in wanted}
    out: list[tuple[str, list[str]]] = []
    if not (Path(cfg.data.root) / cfg.data.video.name / "meta" / "info.json").is_file():
        out.append(("data.generate", base))
    # the policies whose backbones are needed: those trained and those a finetuning variant starts from
    pretrained = trained | {FINETUNING[p][0] for p in trained if p in FINETUNING}
    labellers = sorted({PRETRAINING[p][0] for p in pretrained if PRETRAINING.get(p) and PRETRAINING[p][0]})
    for labeller in labellers:
        package, overrides = LABELLERS[labeller]
        labeller_dir, model = run_dir / labeller, package.split(".")[-1]
        out.append((f"{package}.train", [*base, f"train.{model}.out_dir={labeller_dir}", *overrides]))
        labels = labels_file(cfg, labeller)
        if not labels.is_file():
            out.append(
                (
                    f"{package}.label",
                    [
                        *base,
                        f"label.checkpoint={labeller_dir}",
                        f"label.dataset={video}",
                        f"label.out={labels}",
                    ],
                )
            )
    for name in (p for p in PRETRAINING if p in pretrained):
        if PRETRAINING[name] is None:
            backbone = ["train.policy.backbone=null"]
        else:
            labeller, overrides = PRETRAINING[name]
            backbone_dir = run_dir / "backbone" / name
            labels = [f"train.backbone.labels={labels_file(cfg, labeller)}"] if labeller else []
            out.append(
                (
                    "world_model.backbone.train",
                    [*base, *labels, f"train.backbone.out_dir={backbone_dir}", *overrides],
                )
            )
            backbone = [f"train.policy.backbone={backbone_dir}"]
        if name in trained:
            out += finetunes(cfg, name, [*base, *backbone])
    for name in (p for p in FINETUNING if p in trained):
        origin, overrides = FINETUNING[name]
        out += finetunes(
            cfg, name, [*base, f"train.policy.backbone={run_dir / 'backbone' / origin}", *overrides]
        )
    for name in (p for p in CEILING if p in trained):
        out.append(
            (
                "policies.train_policy",
                [*base, *CEILING[name], f"train.policy.out_dir={run_dir / 'policy' / name}"],
            )
        )
    if "lerobot_baseline" in trained:
        out.append(("policies.lerobot_baseline", [*base, f"lerobot_baseline.out_dir={run_dir / 'act'}"]))
    out = [stage for stage in out if not stage_finished(stage)]
    if cfg.pipeline.evaluate:
        out += [stage for stage in evaluation_stages(cfg, base) if not stage_finished(stage)]
    return out


def finetunes(cfg: DictConfig, name: str, args: list[str]) -> list[tuple[str, list[str]]]:
    """The policy's finetuning stage per seed, into policy/<name>[-seed<k>], with the experiment's extra
    overrides for it (pipeline.finetuning)."""
    seeds = seeds_of(cfg, name)
    return [
        (
            "policies.train_policy",
            [
                *args,
                *finetuning_overrides(cfg, name),
                f"train.policy.seed={seed}",
                f"train.policy.out_dir={Path(cfg.run_dir) / 'policy' / run_name(name, seed, seeds)}",
            ],
        )
        for seed in seeds
    ]


def finetuning_overrides(cfg: DictConfig, name: str) -> list[str]:
    """The experiment's extra finetuning overrides for a policy (pipeline.finetuning[name]; none by default)."""
    return [str(o) for o in cfg.pipeline.get("finetuning", {}).get(name, [])]


def labels_file(cfg: DictConfig, labeller: str) -> Path:
    """Where a labeller run's labels of the video are written."""
    return Path(cfg.run_dir) / labeller / "labels" / f"{cfg.data.video.name}.safetensors"


def evaluation_stages(cfg: DictConfig, base: list[str]) -> list[tuple[str, list[str]]]:
    """One sim.evaluate per (policy, seed), into run_dir/eval/<run>; videos of the first seed only."""
    run_dir, stages_ = Path(cfg.run_dir), []
    for policy, seed, run in evaluations(cfg):
        args = [*base, f"eval.policies=[{policy}]", f"eval.report_dir={run_dir / 'eval' / run}"]
        trained = EXTRA_EVAL.get(policy, policy)
        if trained in PRETRAINING:  # the registry loads the first seed's run: point it at this one
            source = run_name(trained, seed, seeds_of(cfg, trained))
            args.append(f"policies.{policy}.path={run_dir / 'policy' / source / 'pretrained_model'}")
        if seed != seeds_of(cfg, policy)[0]:
            args.append("eval.save_videos=false")
        stages_.append(("sim.evaluate", args))
    return stages_


# stage module -> (the override naming its output folder, the file there that says it finished)
FINISHED = {
    "world_model.lam.train": ("train.lam.out_dir=", "summary.json"),
    "world_model.idm.train": ("train.idm.out_dir=", "summary.json"),
    "world_model.backbone.train": ("train.backbone.out_dir=", "summary.json"),
    "policies.train_policy": ("train.policy.out_dir=", "summary.json"),
    "policies.lerobot_baseline": (
        "lerobot_baseline.out_dir=",
        "checkpoints/last/pretrained_model/model.safetensors",
    ),
    "sim.evaluate": ("eval.report_dir=", "results.json"),
}


def stage_finished(stage: tuple[str, list[str]]) -> bool:
    """A training whose summary is written, an evaluation whose results are: the stage has nothing to do."""
    module, args = stage
    if module not in FINISHED:
        return False
    key, done = FINISHED[module]
    folder = [a.split("=", 1)[1] for a in args if a.startswith(key)]
    return bool(folder) and (Path(folder[-1]) / done).is_file()


def run_plan(plan: list[tuple[str, list[str]]], run_dir: Path, time_file: str = TIME_FILE) -> float:
    """Run the stages in order; adds this segment's minutes to run_dir/`time_file` even when a stage fails,
    and returns the whole run's minutes so far."""
    start = time.perf_counter()
    try:
        for module, args in plan:
            run(module, args)
    finally:  # an interrupted segment's minutes count too
        wall = record_segment(run_dir, (time.perf_counter() - start) / 60, time_file)
    return wall


def record_segment(run_dir: Path, minutes: float, name: str = TIME_FILE) -> float:
    """Adds this segment's minutes to run_dir/`name`; returns the whole run's so far."""
    path = run_dir / name
    segments = json.loads(path.read_text())["segments_minutes"] if path.is_file() else []
    segments.append(round(minutes, 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"segments_minutes": segments, "wall_minutes": round(sum(segments), 2)}, indent=1)
    )
    tmp.replace(path)
    return sum(segments)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from policies.results import write_results

    base = [a for a in sys.argv[1:] if not a.startswith(("pipeline.", "hydra."))]
    plan = stages(cfg, base)
    run_dir = Path(cfg.run_dir)
    print(f"pipeline: {len(plan)} stages for {list(cfg.pipeline.policies)} under {run_dir}")
    wall = run_plan(plan, run_dir)
    if cfg.pipeline.evaluate:
        command = "python -m policies.pipeline " + " ".join(sys.argv[1:])
        print(write_results(cfg, wall, command))
    print(f"\npipeline done: {wall:.1f} min over all segments; table: {cfg.eval.report_dir}/results.md")


if __name__ == "__main__":
    main()
