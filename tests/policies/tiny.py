"""A tiny ViPRA-style policy config (32x32 frames, chunks of 6) for fast tests."""

import torch
from lerobot.configs import FeatureType, PolicyFeature

from policies.vipra import VipraConfig
from world_model.backbone.model import BackboneConfig

TINY_BACKBONE = BackboneConfig(image_size=32, patch_size=8, horizon=6, dim=32, heads=2, layers=1, pool=2)


def tiny_config(**kw) -> VipraConfig:
    args = dict(
        input_features={
            "observation.images.image": PolicyFeature(FeatureType.VISUAL, (3, 32, 32)),
            "observation.state": PolicyFeature(FeatureType.STATE, (7,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (7,))},
        chunk_size=6,
        n_action_steps=3,
        backbone=TINY_BACKBONE.to_dict(),
        dim=32,
        heads=2,
        layers=1,
        optimizer_lr=2e-3,
        backbone_lr_scale=1.0,
    )
    return VipraConfig(**(args | kw))


STATS = {
    "observation.state": {"mean": torch.zeros(7), "std": torch.ones(7)},
    "action": {"mean": torch.full((7,), 0.1), "std": torch.full((7,), 0.5)},
}


def tiny_state_config(**kw) -> VipraConfig:
    """state_fm's tiny variant: the privileged-state context instead of a camera."""
    args = dict(
        input_features={
            "observation.state": PolicyFeature(FeatureType.STATE, (7,)),
            "observation.environment_state": PolicyFeature(FeatureType.ENV, (8,)),
        },
        context="state",
        state_encoder_hidden=32,
        vocab_size=64,
    )
    return tiny_config(**(args | kw))


STATE_STATS = STATS | {"observation.environment_state": {"mean": torch.zeros(8), "std": torch.ones(8)}}


def processed(policy, stats: dict = STATS):
    """`policy` behind the processors of `stats`, as make_policy loads a trained one (the dataset's units)."""
    from policies.runner import ProcessedPolicy
    from policies.vipra.processor_vipra import make_vipra_pre_post_processors

    return ProcessedPolicy(policy, *make_vipra_pre_post_processors(policy.config, stats))


def save_trained(policy, path, stats: dict = STATS) -> None:
    """The policy folder the trainers write: weights, config and the processor pair of `stats`."""
    from policies.train_policy import save_pretrained_atomic
    from policies.vipra.processor_vipra import make_vipra_pre_post_processors

    save_pretrained_atomic(policy, make_vipra_pre_post_processors(policy.config, stats), path)
