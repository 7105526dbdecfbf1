"""The neural simulator bench's policy sets against the rollouts it is trained on (config only)."""

from bench.common import compose_config


def _paths(nodes) -> dict[str, str]:
    return {name: node.path for name, node in nodes.items() if not isinstance(node, str) and "path" in node}


def test_judged_checkpoints_are_unseen_and_seen_controls_drove_the_rollouts():
    cfg = compose_config(["run_dir=outputs/results"])
    bcfg = cfg.bench_neural_sim
    rollout_paths = set(_paths({k.name: k.policy for k in cfg.data.rollouts.kinds}).values())
    judged = _paths(bcfg.policies)
    assert len(judged) >= 3 and not rollout_paths & set(judged.values())
    seen = {name: path for name, path in _paths(bcfg.controls).items() if name.endswith("_seen")}
    assert seen and set(seen.values()) <= rollout_paths
    assert bcfg.controls.state_fm.path.endswith("policy/state_fm/pretrained_model")


def test_trained_checkpoints_decode_as_make_results_in_rollouts_and_bench():
    results = compose_config(["experiment=results"]).eval.flow_steps  # what make results decodes with
    cfg = compose_config(["run_dir=outputs/results"])
    vipra = [k.policy for k in cfg.data.rollouts.kinds if "vipra" in str(k.policy)]
    bcfg = cfg.bench_neural_sim
    judged = [n for n in [*bcfg.policies.values(), *bcfg.controls.values()] if "vipra" in str(n)]
    assert vipra and judged
    assert {int(n.num_inference_steps) for n in vipra + judged} == {results}
