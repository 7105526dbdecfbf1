"""The whole pipeline at toy scale on the fixture datasets: latent actions -> labels -> backbone ->
policy -> the evaluation harness; and the stage plan of python -m policies.pipeline."""

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize

TINY = [
    "task.tasks=[stack_block,carrot_on_plate]",
    "data.demos.name=demos",
    "data.video.name=video",
    # latent action model
    "model.lam.dim=16", "model.lam.heads=2", "model.lam.idm_layers=1", "model.lam.fdm_layers=1",
    "train.lam.steps=2", "train.lam.batch_size=2", "train.lam.val_clips=4", "train.lam.val_fraction=0.2",
    # backbone (with a transformer layer and the latent actions: ours_latent's path)
    "model.backbone.dim=32", "model.backbone.heads=2", "model.backbone.layers=1", "model.backbone.horizon=6",
    "model.backbone.stem_channels=16", "train.backbone.steps=3", "train.backbone.batch_size=4",
    "train.backbone.val_fraction=0.2", "train.backbone.ckpt_every=2",
    "train.backbone.labels=${train.lam.out_dir}/labels/${data.video.name}.safetensors", "train.backbone.loss.action=1.0",
    # policy
    "model.policy.chunk_size=6", "model.policy.n_action_steps=3", "model.policy.dim=32", "model.policy.heads=2",
    "model.policy.layers=1", "train.policy.steps=3", "train.policy.batch_size=4", "train.policy.ckpt_every=2",
]  # fmt: skip


def config(root, run_dir, *extra):
    with initialize(version_base="1.3", config_path="../../conf"):
        return compose(
            "config",
            overrides=[
                f"data.root={root}",
                f"run_dir={run_dir}",
                f"train.lam.out_dir={run_dir}/lam",
                f"train.backbone.out_dir={run_dir}/backbone",
                f"train.policy.out_dir={run_dir}/policy",
                *TINY,
                *extra,
            ],
        )


@pytest.fixture(scope="module")
def pipeline_runs(datasets, tmp_path_factory):
    """Train every stage once at toy scale; returns (cfg, run_dir)."""
    from world_model.backbone.train import train as train_backbone
    from world_model.lam.label import label_dataset, write_labels
    from world_model.lam.model import load_lam
    from world_model.lam.train import train as train_lam

    root, run_dir = datasets[0], tmp_path_factory.mktemp("runs")
    cfg = config(root, run_dir)
    train_lam(cfg)
    lam = load_lam(cfg.train.lam.out_dir)
    labels = label_dataset(lam, root / "video", cfg.task.image_key)
    write_labels(labels, lam, Path(cfg.train.backbone.labels), {})
    summary = train_backbone(cfg)
    return cfg, run_dir, summary


def test_backbone_trains_on_labelled_video(pipeline_runs):
    _, run_dir, summary = pipeline_runs
    assert {"frame_mse", "copy_mse", "action_acc", "majority_acc"} <= set(summary)
    assert (run_dir / "backbone/checkpoints/last/model.safetensors").is_file()


def test_finetuned_policy_runs_in_the_harness(pipeline_runs, datasets):
    from data.dataset import load_metadata
    from policies.train_policy import train as train_policy
    from policies.vipra import make_policy
    from sim.evaluate import evaluate
    from world_model.backbone.model import load_backbone

    cfg, run_dir, _ = pipeline_runs
    train_policy(cfg)
    path = run_dir / "policy/pretrained_model"
    policy = make_policy(path)
    # The backbone was initialised from the pretrained one, then tuned at the configured share of the rate.
    pretrained = load_backbone(run_dir / "backbone")
    assert policy.policy.backbone.cfg == pretrained.cfg
    assert policy.config.backbone_lr_scale == pytest.approx(cfg.model.policy.backbone_lr_scale)
    # The demos carry the object poses; the image policy reads the camera and the robot state only.
    assert "observation.environment_state" in load_metadata(datasets[0] / "demos").features
    assert set(policy.config.input_features) == {cfg.task.image_key, "observation.state"}
    # The registry's decoding override: None (eval.flow_steps' default) keeps the checkpoint's own steps.
    assert (
        make_policy(path, num_inference_steps=None).config.num_inference_steps
        == policy.config.num_inference_steps
    )
    assert make_policy(path, num_inference_steps=1).config.num_inference_steps == 1
    results = evaluate(
        {"ours": lambda task: make_policy(path)}, ["stack_block"], ["visual_matching"], episodes=1, num_envs=1
    )
    assert results["policies"]["ours"]["tasks"]["stack_block"]["visual_matching"]["success"]["n"] == 1
    assert set(results["average_success"]["ours"]) == {"visual_matching"}


def test_a_seed_gives_the_same_run_and_another_seed_another(pipeline_runs, datasets, tmp_path):
    from safetensors.torch import load_file

    from policies.train_policy import train as train_policy

    _, run_dir, _ = pipeline_runs
    weights = {}
    for name, seed in (("first", 0), ("again", 0), ("other", 1)):
        out = tmp_path / name
        overrides = ["train.policy.backbone=null", f"train.policy.seed={seed}", f"train.policy.out_dir={out}"]
        train_policy(config(datasets[0], run_dir, *overrides))
        weights[name] = load_file(out / "pretrained_model" / "model.safetensors")
    for key, value in weights["first"].items():
        torch.testing.assert_close(weights["again"][key], value, rtol=0, atol=0)
    assert any(not torch.equal(weights["other"][k], v) for k, v in weights["first"].items())


def test_scratch_policy_and_resume(pipeline_runs, datasets):
    from policies.train_policy import train as train_policy

    _, run_dir, _ = pipeline_runs
    cfg = config(
        datasets[0], run_dir, "train.policy.backbone=null", f"train.policy.out_dir={run_dir}/scratch"
    )
    assert train_policy(cfg)["resumed_at"] == 0
    cfg.train.policy.steps = 4
    assert train_policy(cfg)["resumed_at"] == 3  # the final checkpoint of the first run
    from policies.vipra import make_policy

    policy = make_policy(run_dir / "scratch/pretrained_model")
    assert policy.config.backbone_lr_scale == 1.0
    obs = {
        "observation.images.image": torch.rand(1, 3, 64, 64),
        "observation.state": torch.zeros(1, 7),
        "task": ["x"],
    }
    assert policy.select_action(obs).shape == (1, 7)


def test_pipeline_plans_every_stage_of_the_table(tmp_path):
    """make results: the backbone once for every seed, ours and scratch_fm per seed, state_fm, ACT, and one
    evaluation per (policy, seed), a finished one left out; make experiment: a backbone per ablation."""
    from policies.pipeline import stages

    runs = tmp_path / "runs"
    cfg = config(tmp_path / "data", runs, "experiment=results")
    plan = stages(cfg, ["experiment=results"])
    modules = [m for m, _ in plan]
    assert modules[0] == "data.generate" and "world_model.lam.train" not in modules
    assert modules.count("world_model.backbone.train") == 1 and "policies.lerobot_baseline" in modules
    trains = [args for m, args in plan if m == "policies.train_policy"]
    outs = sorted(a.split("/")[-1] for args in trains for a in args if a.startswith("train.policy.out_dir="))
    assert outs == sorted(
        ["ours", "ours-seed1", "ours-seed2", "scratch_fm", "scratch_fm-seed1", "scratch_fm-seed2", "state_fm"]
    )
    assert "model/policy=state_fm" in next(
        a for a in trains if f"train.policy.out_dir={runs}/policy/state_fm" in a
    )
    # The recipe co-trains ours on the video (pipeline.finetuning), and only ours.
    cotrained = [
        a for args in trains if "train.policy.cotrain.weight=1.0" in args
        for a in args if a.startswith("train.policy.out_dir=")
    ]  # fmt: skip
    assert sorted(a.split("/")[-1] for a in cotrained) == ["ours", "ours-seed1", "ours-seed2"]
    evals = [args for m, args in plan if m == "sim.evaluate"]
    assert len(evals) == 10  # scripted, state_fm, ours x 3, scratch_fm x 3, ACT, random
    seed2 = next(a for a in evals if f"eval.report_dir={runs}/eval/ours-seed2" in a)
    assert f"policies.ours.path={runs}/policy/ours-seed2/pretrained_model" in seed2
    (runs / "eval" / "random").mkdir(parents=True)
    (runs / "eval" / "random" / "results.json").write_text("{}")
    assert len([m for m, _ in stages(cfg, []) if m == "sim.evaluate"]) == 9  # finished: not rerun

    cfg = config(tmp_path / "data", runs, "experiment=full")
    modules = [m for m, _ in stages(cfg, ["experiment=full"])]
    assert modules.count("world_model.lam.train") == 1  # ours_latent's latent actions
    assert modules.count("world_model.backbone.train") == 6 and modules.count("policies.train_policy") == 7
    # The supervised variant has its own latent action model, which alone reads the demos' actions.
    cfg.pipeline.policies = ["ours_latent", "ours_lam_supervised"]
    lams = {
        next(a for a in args if a.startswith("train.lam.out_dir=")).split("/")[-1]: args
        for m, args in stages(cfg, [])
        if m == "world_model.lam.train"
    }
    assert sorted(lams) == ["lam", "lam_supervised"]
    assert "train.lam.action_supervision.weight=1.0" in lams["lam_supervised"]
    assert not any("action_supervision" in a for a in lams["lam"])
    # The inverse dynamics model's pseudo-actions: its own run, labels, and the backbone reads them.
    cfg.pipeline.policies = ["ours_idm"]
    plan = stages(cfg, [])[1:-1]  # between data.generate and the evaluation
    assert [m for m, _ in plan] == [
        "world_model.idm.train",
        "world_model.idm.label",
        "world_model.backbone.train",
        "policies.train_policy",
    ]
    assert f"train.idm.out_dir={runs}/idm" in plan[0][1]
    assert f"label.out={runs}/idm/labels/video.safetensors" in plan[1][1]
    assert f"train.backbone.labels={runs}/idm/labels/video.safetensors" in plan[2][1]
    cfg.pipeline.policies = ["ours_latent", "ours_lam_supervised"]
    # A continuous LAM labels the video with its latents, which the backbones regress: the same stages.
    planned = [m for m, _ in stages(cfg, [])]
    cfg.model.lam.quantizer = "none"
    assert [m for m, _ in stages(cfg, [])] == planned
    cfg.model.lam.quantizer = "nsvq"
    # Co-training finetunes from ours' backbone (trained once, also when ours itself is not in the table).
    cfg.pipeline.policies, cfg.pipeline.seeds = ["ours_cotrain"], [0, 1]
    plan = stages(cfg, [])[1:]
    assert [m for m, _ in plan[:3]] == ["world_model.backbone.train", *["policies.train_policy"] * 2]
    assert f"train.backbone.out_dir={runs}/backbone/ours" in plan[0][1]
    for args, out in zip((plan[1][1], plan[2][1]), ("ours_cotrain", "ours_cotrain-seed1"), strict=True):
        assert (
            f"train.policy.backbone={runs}/backbone/ours" in args
            and "train.policy.cotrain.weight=1.0" in args
        )
        assert f"train.policy.out_dir={runs}/policy/{out}" in args
    cfg.pipeline.seeds = [0]
    cfg.pipeline.policies = ["ours", "nonsense"]
    with pytest.raises(ValueError, match="unknown policies"):
        stages(cfg, [])
    cfg.pipeline.seeds = [0, 0]
    cfg.pipeline.policies = ["ours"]
    with pytest.raises(ValueError, match="distinct"):
        stages(cfg, [])


def test_results_table_averages_the_seeds_and_keeps_each(tmp_path):
    """policies.results: per-seed rates, their mean, the seeds, the wall time and the stamp; a missing
    evaluation is an error naming it."""
    import json

    from policies.results import write_results

    runs, report = tmp_path / "runs", tmp_path / "report"
    cfg = config(
        tmp_path / "data", runs, "experiment=results", "pipeline.policies=[ours,random]", "pipeline.seeds=[0,1]",
        f"eval.report_dir={report}",
    )  # fmt: skip

    def fake(name: str, rate: float) -> dict:
        stat = {"rate": rate, "ci95": [0.0, 1.0], "n": 2}
        tasks = {t: {p: {"success": stat, "grasp": stat} for p in ("visual_matching", "variant_aggregation")}
                 for t in ("stack_block", "carrot_on_plate")}  # fmt: skip
        average = {p: {"success": rate, "grasp": rate} for p in ("visual_matching", "variant_aggregation")}
        return {
            "episodes_per_task": 2,
            "seed": 1000,
            "policies": {name: {"tasks": tasks, "average": average}},
        }

    for run, name, rate in (("ours", "ours", 0.5), ("ours-seed1", "ours", 0.25), ("random", "random", 0.0)):
        (runs / "eval" / run).mkdir(parents=True)
        (runs / "eval" / run / "results.json").write_text(json.dumps(fake(name, rate)))
    text = write_results(cfg, 12.5, "python -m policies.pipeline experiment=results")
    table = json.loads((report / "results.json").read_text())
    assert table["per_seed"]["ours"]["visual_matching"] == [0.5, 0.25]
    assert table["average_success"]["ours"]["visual_matching"] == 0.375
    assert table["seeds"] == {"ours": [0, 1], "random": [0]} and table["episodes_per_task"] == 2
    assert table["wall_minutes"] == 12.5 and table["command"].startswith("python -m policies.pipeline")
    assert table["commit"] and "**37.5** [25.0, 50.0]" in text
    assert table["flow_steps"] == 1 and table["finetuning"] == {"ours": ["train.policy.cotrain.weight=1.0"]}
    assert (report / "results.md").is_file() and (report / "results.png").is_file()
    (runs / "eval" / "ours-seed1" / "results.json").unlink()
    with pytest.raises(FileNotFoundError, match="ours-seed1"):
        write_results(cfg, 1.0, "x")


def backbone_step_overrides(root, cfg, out_dir, *extra) -> list[str]:
    """One backbone step with random shifts, from the labelled fixture video."""
    return [
        f"data.root={root}",
        *[o for o in TINY if o.startswith(("task.", "data.", "model.backbone.", "train.backbone."))],
        f"train.backbone.labels={cfg.train.backbone.labels}",  # after TINY's, which names this run's LAM
        f"train.backbone.out_dir={out_dir}",
        "model.backbone.horizon=1",  # no chunk runs past an episode's end, so no masked mean: see below
        # the change map's loss is a mean over the frames that change (another masked mean): off here
        "model.backbone.change_map=false",
        "train.backbone.loss.change_map=0",
        "train.backbone.steps=1",
        "train.backbone.batch_size=8",
        "train.backbone.shift=2",
        *extra,
    ]


def test_ddp_and_accumulated_steps_equal_the_one_process_step(pipeline_runs, datasets, tmp_path):
    """torchrun with 2 processes (DDP on gloo) and 2 accumulated micro-batches both take the one-process
    step of the same global batch. Compared through AdamW's first moment after one step, which is a tenth
    of the (clipped) gradient: the weights themselves are a poor witness, since Adam's first update is
    about lr x sign(gradient) and float noise flips the sign of near-zero entries. A loss averaged over a
    mask (latent-action codes past an episode's end) is averaged per micro-batch, as in any DDP job, so
    the comparison uses one-step chunks, which are never padded."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from world_model.backbone.train import train as train_backbone

    cfg, _, _ = pipeline_runs
    root = datasets[0]
    runs = {"one": [], "accum": ["train.backbone.grad_accum=2"], "half": ["train.backbone.batch_size=4"]}
    for name, extra in runs.items():
        train_backbone(config(root, tmp_path, *backbone_step_overrides(root, cfg, tmp_path / name, *extra)))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = [
        *torchrun,
        "-m",
        "world_model.backbone.train",
        *backbone_step_overrides(root, cfg, tmp_path / "ddp"),
    ]
    done = subprocess.run(
        args, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stdout
    moments = {}
    for name in [*runs, "ddp"]:
        state = load_file(tmp_path / name / "checkpoints/last/train_state.safetensors")
        moments[name] = torch.cat([v.flatten() for k, v in sorted(state.items()) if k.endswith(".exp_avg")])

    def relative_diff(a, b):
        return ((moments[a] - moments[b]).abs().max() / moments["one"].abs().max()).item()

    assert relative_diff("ddp", "one") < 1e-4 and relative_diff("accum", "one") < 1e-4
    assert relative_diff("half", "one") > 1e-2  # another batch gives another gradient: the check can fail


def test_keypoint_pretraining_on_frames_alone_and_its_probe(datasets, tmp_path):
    """The backbone pretrains on the video without latent-action labels (keypoint bottleneck and forecast),
    refuses an action loss it has no labels for, and its frozen keypoints feed the feature probe."""
    import json

    from bench.localization import main as localization
    from world_model.backbone.train import train as train_backbone

    root = datasets[0]
    keypoints = [
        "train.backbone.labels=null",
        "train.backbone.loss.keypoints=10",
        "train.backbone.loss.keypoint_forecast=10",
        "model.backbone.stem=conv",
        "model.backbone.stem_channels=16",
        "model.backbone.keypoints=4",
        "model.backbone.keypoint_forecast=true",
    ]
    with pytest.raises(
        ValueError, match=r"labels is null \(no latent actions\) but train.backbone.loss.action is 1.0"
    ):
        train_backbone(config(root, tmp_path, *keypoints))
    summary = train_backbone(config(root, tmp_path, *keypoints, "train.backbone.loss.action=0"))
    assert summary["keypoint_mse"] > 0 and "action_acc" not in summary
    assert summary["forecast_mse"] > 0 and summary["static_forecast_mse"] > 0
    out, figure = tmp_path / "probe.json", tmp_path / "keypoints.png"
    args = ["--dataset", str(root / "demos"), "--encoders", "", "--backbone", str(tmp_path / "backbone")]
    localization([*args, "--probe-steps", "5", "--out", str(out), "--figure", str(figure)])
    probe = json.loads(out.read_text())["feature_probe"]
    assert probe["features"] == "keypoints" and figure.is_file()
    assert all(0 <= v < 100 for name in ("pretrained", "random_init") for v in probe[name].values())


def test_the_feature_probe_reads_the_conv_stem_map_with_the_camera(pipeline_runs, datasets, tmp_path):
    """bench.localization on a conv-stem backbone: a linear heatmap probe of its frozen map, the peaks seen
    on the table through the task's camera, in cm, for the pretrained backbone and a random twin."""
    import json

    from bench.localization import main as localization

    _, run_dir, _ = pipeline_runs
    out = tmp_path / "probe.json"
    args = [
        "--dataset",
        str(datasets[0] / "demos"),
        "--encoders",
        "",
        "--backbone",
        str(run_dir / "backbone"),
    ]
    localization([*args, "--probe-steps", "5", "--out", str(out)])
    probe = json.loads(out.read_text())["feature_probe"]
    assert probe["features"] == "stem map (linear heatmap probe)"
    for name in ("pretrained", "random_init"):
        assert set(probe[name]) == {"source_xy", "target_xy", "hand_xy"}
        assert all(0 < v < 100 for v in probe[name].values()), probe[name]


def test_waypoints_are_where_the_demos_grasp_and_train_through_the_trainer(pipeline_runs, datasets):
    """next_gripper_events: before the grasp the next close is over the object to pick and the next open
    after it (the demos' own states find them, no object pose read); projected through the task's camera
    the object is where it is drawn; a scratch policy with the waypoint maps and the hand anchor trains and
    scores all three (the anchor's label is the hand in the frame itself)."""
    from data.camera import PinholeCamera
    from data.chunks import EpisodeBank
    from policies.train_policy import Waypoints, next_gripper_events
    from policies.train_policy import train as train_policy

    bank = EpisodeBank.load(
        datasets[0] / "demos",
        "observation.images.image",
        ["observation.state", "action", "observation.environment_state"],
    )
    events = next_gripper_events(bank, gripper_dim=6)
    for start in bank.episode_start.unique().tolist():
        close, release = events[start].tolist()
        assert (
            close > start and bank.columns["action"][close, 6] >= 0.5 > bank.columns["action"][close - 1, 6]
        )
        hand, source = (
            bank.columns["observation.state"][close, :2],
            bank.columns["observation.environment_state"][close, :2],
        )
        assert torch.linalg.norm(hand - source) < 0.02  # the expert closes over the object
        assert release > close and bank.columns["action"][release, 6] < 0.5
        assert events[close].tolist() == [-1, release]  # after the close, only the release is ahead
        assert events[bank.episode_end[start]].tolist() == [-1, -1]  # nothing after the last frame

    cfg = config(datasets[0], pipeline_runs[1])
    camera = PinholeCamera.from_config(cfg.task.camera, cfg.task.image_size)
    waypoints = Waypoints.of(bank, 6, camera)
    first = bank.episode_start.unique()
    assert not waypoints.is_pad[first].any()
    # the hand at the close, seen from the camera, is where the object to pick is drawn (within the 2 cm
    # the hand stays above the object's centre: a few pixels)
    pixels = (waypoints.unit[first, 0].double().numpy() + 1) * cfg.task.image_size / 2
    drawn = camera.project(bank.columns["observation.environment_state"][first, :3].double().numpy())
    assert ((pixels - drawn) ** 2).sum(-1).max() ** 0.5 < 5
    anchored = Waypoints.of(bank, 6, camera, hand=True)
    torch.testing.assert_close(anchored.unit[:, :2], waypoints.unit)
    torch.testing.assert_close(anchored.points[:, 2], bank.columns["observation.state"][:, :3])
    assert not anchored.is_pad[:, 2].any()

    _, run_dir, _ = pipeline_runs
    cfg = config(
        datasets[0],
        run_dir,
        "train.policy.backbone=null",
        f"train.policy.out_dir={run_dir}/waypoint",
        "model.backbone.stem=conv",
        "model.policy.waypoint_weight=1.0",
        "model.policy.hand_anchor=true",
        "train.policy.val_fraction=0.5",
    )
    summary = train_policy(cfg)
    assert all(0 < summary[f"held_out_waypoint_{e}_cm"] < 100 for e in ("close", "open", "now"))
    saved = json.loads((run_dir / "waypoint" / "pretrained_model" / "config.json").read_text())
    assert saved["hand_anchor"] and len(saved["hand_position_stats"]["std"]) == 3


def test_make_results_runs_through_the_harness_on_a_toy_profile(datasets, tmp_path):
    """python -m policies.pipeline experiment=results at toy scale, two seeds: every stage as a subprocess,
    the table with both seeds, the wall time of the run; a second run finds everything done."""
    import json
    import subprocess
    import sys

    root, runs, report = datasets[0], tmp_path / "runs", tmp_path / "report"
    overrides = [
        f"data.root={root}", f"run_dir={runs}", *TINY, "experiment=results",
        "train.backbone.labels=null", "train.backbone.loss.action=0", "model.backbone.layers=0",
        "pipeline.policies=[ours,random]", "pipeline.seeds=[0,1]",
        "eval.episodes_per_task=1", "eval.num_envs=1", "eval.save_videos=false",
        "eval.protocols=[visual_matching]", f"eval.report_dir={report}",
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "policies.pipeline", *overrides]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    table = json.loads((report / "results.json").read_text())
    assert table["seeds"] == {"ours": [0, 1], "random": [0]}
    assert all(len(v["visual_matching"]) == len(table["seeds"][k]) for k, v in table["per_seed"].items())
    assert table["episodes_per_task"] == 1 and table["wall_minutes"] > 0
    assert (runs / "policy" / "ours-seed1" / "pretrained_model" / "model.safetensors").is_file()
    again = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    assert "pipeline: 0 stages" in again  # resumed: nothing left to do
    assert len(json.loads((runs / "pipeline_time.json").read_text())["segments_minutes"]) == 2


def test_make_data_efficiency_runs_through_the_harness_on_a_toy_profile(datasets, tmp_path):
    """python -m policies.data_efficiency at toy scale: ours and Scratch-FM on 1 and 2 demos (2: every demo,
    the name make results gives its seed-0 runs), each evaluated, the curve's JSON with Wilson intervals and
    its plot; a second run finds everything done."""
    import json
    import subprocess
    import sys

    root, runs, out = datasets[0], tmp_path / "runs", tmp_path / "report" / "data_efficiency.json"
    overrides = [
        f"data.root={root}", f"run_dir={runs}", *TINY, "experiment=data_efficiency", "data.demos.episodes=2",
        "train.backbone.labels=null", "train.backbone.loss.action=0", "model.backbone.layers=0",
        "data_efficiency.demos=[1,2]", "data_efficiency.episodes_per_task=1", "eval.episodes_per_task=1",
        "eval.num_envs=1", "eval.save_videos=false", "eval.protocols=[visual_matching]", f"data_efficiency.out={out}",
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "policies.data_efficiency", *overrides]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    table = json.loads(out.read_text())
    for policy in ("ours", "scratch_fm"):
        rates = table[policy]
        assert set(rates) == {"1", "2"} and all(0 <= r <= 1 for r in rates.values())
        for n, (low, high) in table["ci95"][policy].items():
            assert low <= rates[n] <= high and table["episodes"][policy][n] == 2  # 1 episode x 2 tasks
    assert (runs / "policy" / "ours-demos1" / "pretrained_model" / "model.safetensors").is_file()
    assert (runs / "policy" / "scratch_fm" / "summary.json").is_file()  # every demo: make results' run name
    assert out.with_suffix(".png").is_file() and table["wall_minutes"] > 0 and table["commit"]
    again = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    assert "data efficiency: 0 stages" in again


def test_cotraining_keeps_the_backbone_predicting_the_video(pipeline_runs, datasets, tmp_path):
    """With train.policy.cotrain the backbone's own pretraining loss on the video joins the policy's: its
    frame and change-map heads, which the policy's loss never reaches, move only then; a run without a
    frames-only pretrained backbone to continue is refused."""
    from safetensors.torch import load_file

    from policies.train_policy import train as train_policy
    from world_model.backbone.train import train as train_backbone

    root, (_, run_dir, _) = datasets[0], pipeline_runs
    frames_only = ["train.backbone.labels=null", "train.backbone.loss.action=0"]
    backbone = tmp_path / "backbone"
    train_backbone(config(root, tmp_path, *frames_only))
    pretrained = load_file(backbone / "checkpoints/last/model.safetensors")
    heads = [k for k in pretrained if k.startswith(("to_pixels.", "change_head."))]
    assert heads
    cotrain = ["train.policy.cotrain.weight=1.0", "train.policy.cotrain.fraction=0.5"]
    weights = {}
    for name, extra in (("plain", []), ("cotrained", cotrain)):
        out = tmp_path / name
        train_policy(config(root, tmp_path, *frames_only, *extra, f"train.policy.out_dir={out}"))
        weights[name] = load_file(out / "pretrained_model/model.safetensors")
    for key in heads:
        torch.testing.assert_close(weights["plain"][f"backbone.{key}"], pretrained[key], rtol=0, atol=0)
    assert any(not torch.equal(weights["cotrained"][f"backbone.{k}"], pretrained[k]) for k in heads)

    # Split into micro-batches (or processes), a step takes the same video samples as in one batch.
    from policies.train_policy import video_share

    whole = video_share(torch.arange(32), 32, 0.5)
    assert whole.tolist() == list(range(16))
    halves = [video_share(part, 32, 0.5) for part in torch.arange(32).view(2, 16)]
    assert [len(h) for h in halves] == [8, 8] and torch.cat(halves).tolist() == whole.tolist()
    with pytest.raises(ValueError, match="whole number"):
        train_policy(
            config(
                root,
                tmp_path,
                *frames_only,
                "train.policy.cotrain.weight=1",
                "train.policy.cotrain.fraction=0.1",
            )
        )
    with pytest.raises(ValueError, match="Scratch-FM has none"):
        train_policy(config(root, tmp_path, *cotrain, "train.policy.backbone=null"))
    with pytest.raises(ValueError, match="pretrained on latent-action labels"):  # the fixture's backbone
        train_policy(config(root, run_dir, *cotrain, f"train.policy.out_dir={tmp_path}/refused"))
    with pytest.raises(ValueError, match="backbone_lr_scale is 0"):
        train_policy(config(root, tmp_path, *frames_only, *cotrain, "model.policy.backbone_lr_scale=0"))
