"""bench.policy: the sampler gap compares the few-step chunk with the 10-step one from the same noise; the
few-step mode reaches sim.evaluate as the overrides it names."""

import pytest
import torch

import bench.policy
from policies.vipra import VipraPolicy
from tests.policies.tiny import TINY_BACKBONE, processed, tiny_config

IMAGE_KEY = "observation.images.image"


def policy_at_64px(**kw):
    from lerobot.configs import FeatureType, PolicyFeature

    torch.manual_seed(0)
    features = {
        IMAGE_KEY: PolicyFeature(FeatureType.VISUAL, (3, 64, 64)),
        "observation.state": PolicyFeature(FeatureType.STATE, (7,)),
    }
    backbone = TINY_BACKBONE.to_dict() | {"image_size": 64} | kw.pop("backbone", {})
    return processed(VipraPolicy(tiny_config(input_features=features, backbone=backbone, **kw)).eval())


def test_sampler_gap_is_zero_when_the_few_steps_are_the_ten(datasets, monkeypatch):
    demos = datasets[0] / "demos"
    policy = policy_at_64px(num_few_steps=2)
    gap = bench.policy.sampler_gap(policy, demos, IMAGE_KEY, 2, shortcut=True, frames=16)
    assert gap == bench.policy.sampler_gap(policy, demos, IMAGE_KEY, 2, shortcut=True, frames=16)  # fixed
    assert gap["frames"] == 16 and gap["k10_vs_k10_mse"] > 0 and gap["few_vs_k10_mse"] > 0
    assert gap["ratio"] == pytest.approx(gap["few_vs_k10_mse"] / gap["k10_vs_k10_mse"])
    one_euler = bench.policy.sampler_gap(policy, demos, IMAGE_KEY, 1, shortcut=False, frames=16)
    assert (
        one_euler["k10_vs_k10_mse"] == gap["k10_vs_k10_mse"]
        and one_euler["few_vs_k10_mse"] != gap["few_vs_k10_mse"]
    )
    # Ten plain Euler steps as the "few-step" mode: the reference sampler itself, from the same noise.
    assert (
        bench.policy.sampler_gap(policy, demos, IMAGE_KEY, 10, shortcut=False, frames=16)["few_vs_k10_mse"]
        == 0.0
    )


def test_few_step_modes_reach_the_evaluation_as_make_policy_overrides():
    from bench.common import compose_config

    euler = bench.policy.few_step_overrides("euler", 1)
    shortcut = bench.policy.few_step_overrides("shortcut", 2)
    assert euler == {"few_step": False, "num_inference_steps": 1}
    assert shortcut == {"few_step": True, "num_few_steps": 2}
    with pytest.raises(ValueError, match="power-of-two"):
        bench.policy.few_step_overrides("shortcut", 3)
    with pytest.raises(ValueError, match="'euler' or 'shortcut', got 'rk4'"):
        bench.policy.few_step_overrides("rk4", 1)

    path = "outputs/results/policy/ours/pretrained_model"
    cfg = compose_config(
        [
            f"+policies.k1={bench.policy.policy_entry(path, euler)}",
            f"+policies.s2={bench.policy.policy_entry(path, shortcut)}",
        ]
    )
    assert (
        dict(cfg.policies.k1)
        == {"_target_": "policies.vipra.make_policy", "_partial_": True, "path": path} | euler
    )
    assert dict(cfg.policies.s2)["few_step"] is True and cfg.policies.s2.num_few_steps == 2
