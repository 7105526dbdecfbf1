"""Merging separately run evaluations into one table."""

import pytest

from sim.merge import merge


def part(names, seed=1000, tasks=("stack_block",), protocols=("visual_matching",), rate=0.5):
    stat = {"rate": rate, "ci95": [0.1, 0.9], "n": 10}
    entry = {
        "tasks": {t: {p: {"success": stat, "grasp": stat} for p in protocols} for t in tasks},
        "average": {p: {"success": rate, "grasp": rate} for p in protocols},
    }
    return {"episodes_per_task": 10, "seed": seed, "image_size": 64, "policies": {n: entry for n in names},
            "command": f"eval {names}", "commit": "abc"}  # fmt: skip


def test_merge_keeps_every_policy_in_the_requested_order():
    merged = merge([part(["a", "b"]), part(["c"], rate=0.2)], order=["c", "a"])
    assert list(merged["policies"]) == ["c", "a", "b"]
    assert merged["average_success"]["c"] == {"visual_matching": 0.2}
    assert [p["policies"] for p in merged["parts"]] == [["a", "b"], ["c"]]


def test_merge_refuses_evaluations_of_other_scenes():
    with pytest.raises(ValueError, match="differ in"):
        merge([part(["a"]), part(["b"], seed=7)])
    with pytest.raises(ValueError, match="more than one evaluation"):
        merge([part(["a"]), part(["a"])])
    with pytest.raises(ValueError, match="other tasks or protocols"):
        merge([part(["a"]), part(["b"], tasks=("carrot_on_plate",))])
    with pytest.raises(ValueError, match="--order names"):
        merge([part(["a"])], order=["z"])


def test_shard_ranges_cover_the_episodes_once():
    from sim.evaluate import shard_range

    ranges = [shard_range(10, i, 3) for i in range(3)]
    assert [list(r) for r in ranges] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    with pytest.raises(ValueError, match="some shards would be empty"):
        shard_range(2, 0, 3)
    with pytest.raises(ValueError, match=r"must be in \[0, eval.shard.count=2\)"):
        shard_range(4, 2, 2)


def shard(index, count, rate, n):
    p = part(["a"], rate=rate)
    p["policies"]["a"]["tasks"]["stack_block"]["visual_matching"] = {
        key: {"rate": rate, "ci95": [0, 1], "n": n} for key in ("success", "grasp")
    } | {"first_close": {"to_source_cm": [float(index)] * n, "to_target_cm": [None] * n}}
    return p | {"shard": {"index": index, "count": count}, "episodes_per_task": 10}


def test_merge_shards_adds_counts_and_refuses_gaps():
    from sim.merge import merge_shards

    merged = merge_shards([shard(1, 2, 0.2, 5), shard(0, 2, 0.6, 5)])
    stat = merged["policies"]["a"]["tasks"]["stack_block"]["visual_matching"]["success"]
    assert stat["n"] == 10 and stat["rate"] == pytest.approx(0.4) and stat["ci95"][0] < 0.4 < stat["ci95"][1]
    assert merged["average_success"]["a"] == {"visual_matching": pytest.approx(0.4)}
    close = merged["policies"]["a"]["tasks"]["stack_block"]["visual_matching"]["first_close"]
    assert close == {"to_source_cm": [0.0] * 5 + [1.0] * 5, "to_target_cm": [None] * 10}  # in shard order
    with pytest.raises(ValueError, match="exactly once; got shard indices \\[0, 0\\]"):
        merge_shards([shard(0, 2, 0.2, 5), shard(0, 2, 0.2, 5)])
    with pytest.raises(ValueError, match="episodes per entry"):
        merge_shards([shard(0, 2, 0.2, 5), shard(1, 2, 0.2, 4)])


def test_sharded_multirun_on_submitit_local_equals_one_run(tmp_path):
    """Two evaluation shards as a Hydra multirun through the submitit launcher (local executor), merged:
    the same episodes, and so the same counts, as one unsharded run."""
    import json
    import os
    import subprocess
    import sys

    from sim.evaluate import evaluate
    from sim.experts import ScriptedPolicy
    from sim.merge import merge_shards

    report = tmp_path / "eval"
    args = [
        *(sys.executable, "-m", "sim.evaluate", "-m", "hydra/launcher=submitit_local"),
        *(
            "eval.shard.count=2",
            "eval.shard.index=0,1",
            "eval.policies=[scripted]",
            "task.tasks=[stack_block]",
        ),
        *(
            "eval.protocols=[visual_matching]",
            "eval.episodes_per_task=4",
            "eval.num_envs=1",
            "eval.seed=1000",
        ),
        *("eval.save_videos=false", f"eval.report_dir={report}", f"hydra.sweep.dir={tmp_path / 'sweep'}"),
        # One log folder for all jobs: with the default per-job `%j` folder, submitit's local controller can
        # open its log before the submitter has created that folder (a race seen under load).
        f"hydra.launcher.submitit_folder={tmp_path / 'sweep' / '.submitit'}",
    ]
    done = subprocess.run(
        args, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=280
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    parts = [json.loads((report / f"shards/{i}-of-2/results.json").read_text()) for i in range(2)]
    assert [p["shard"]["episodes"] for p in parts] == [[0, 2], [2, 4]]
    merged = merge_shards(parts)
    whole = evaluate(
        {"scripted": ScriptedPolicy}, ["stack_block"], ["visual_matching"], 4, num_envs=1, seed=1000
    )
    entry = lambda r: r["policies"]["scripted"]["tasks"]["stack_block"]["visual_matching"]  # noqa: E731
    assert entry(merged) == entry(whole) and entry(merged)["success"]["n"] == 4
