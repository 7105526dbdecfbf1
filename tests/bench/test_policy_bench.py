"""bench.policy's sampler gap compares the few-step chunk with the 10-step one from the same noise."""

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
    policy = policy_at_64px(num_inference_steps=4, num_few_steps=2)
    gap = bench.policy.sampler_gap(policy, demos, IMAGE_KEY, frames=16)
    assert gap == bench.policy.sampler_gap(policy, demos, IMAGE_KEY, frames=16)  # fixed rows and noise
    assert gap["frames"] == 16 and gap["k10_vs_k10_mse"] > 0 and gap["few_vs_k10_mse"] > 0
    assert gap["ratio"] == pytest.approx(gap["few_vs_k10_mse"] / gap["k10_vs_k10_mse"])

    policy.config.num_few_steps = 4  # and step size 0: the same sampler as the reference, from the same noise
    monkeypatch.setattr(bench.policy, "steps_to_index", lambda steps, shortcut: 0)
    assert bench.policy.sampler_gap(policy, demos, IMAGE_KEY, frames=16)["few_vs_k10_mse"] == 0.0
