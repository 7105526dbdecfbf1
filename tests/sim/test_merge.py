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
