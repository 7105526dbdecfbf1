"""make bench-ceiling on a tiny profile: demos -> state_fm -> the ladder, through the real harness."""

import json

from hydra import compose, initialize

from bench.ceiling import figure, run


def test_ceiling_bench_runs_on_a_tiny_profile(tmp_path):
    overrides = [
        "experiment=ceiling",
        f"bench_ceiling.out_dir={tmp_path}",
        "bench_ceiling.episodes_per_task=1",
        "bench_ceiling.frames_compared=60",
        "data.demos.episodes=1",
        "task.tasks=[stack_block]",
        "eval.num_envs=1",
        "train.policy.steps=4",
        "train.policy.batch_size=8",
        "model.policy.scheduler_warmup_steps=1",
        "model.policy.dim=32",
        "model.policy.layers=1",
    ]
    with initialize(version_base="1.3", config_path="../../conf"):
        cfg = compose("config", overrides=overrides)
    report = run(cfg, "test")
    protocols = {"visual_matching", "variant_aggregation"}
    for key in ("state_fm_success", "state_fm_closed_loop_success", "expert_success", "random_success"):
        assert set(report[key]) == {"stack_block"} and set(report[key]["stack_block"]) == protocols
        assert all(0 <= r <= 1 for r in report[key]["stack_block"].values())
    assert report["expert_success"]["stack_block"] == {p: 1.0 for p in protocols}
    assert report["frame_max_abs_error"] == 0 and report["frames_compared"] == 60  # one 60-step demo
    assert report["demos"] == 1 and report["train_minutes"] > 0
    json.dumps(report)  # the report is plain JSON
    figure(report, tmp_path / "ceiling.png")
    assert (tmp_path / "ceiling.png").stat().st_size > 0
    again = run(cfg, "test")  # reuses the demos and the trained run
    assert again["generate_minutes"] == 0 and again["train_minutes"] == report["train_minutes"]
