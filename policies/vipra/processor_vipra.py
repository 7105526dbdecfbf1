"""Pre- and post-processing of the ViPRA-style policy, as LeRobot's policies do it: processor pipelines
that normalize the state (and state_fm's object poses) and the action with the dataset's statistics,
saved beside the checkpoint (policy_preprocessor.json, policy_postprocessor.json and their
safetensors), so any LeRobot tool that loads a policy folder loads them.

    preprocessor:  rename -> add batch dim -> device -> normalize (mean/std; images stay in [0, 1])
    postprocessor: unnormalize -> snap the binary action dims to 0/1 -> cpu

The policy itself works in normalized units. The instruction's word ids are computed by the model
(`tokenize`), since the backbone's vocabulary is part of its weights.
"""

from dataclasses import dataclass, field

import torch
from lerobot.processor import (
    AddBatchDimensionProcessorStep,
    DeviceProcessorStep,
    NormalizerProcessorStep,
    PolicyActionProcessorStep,
    ProcessorStepRegistry,
    RenameObservationsProcessorStep,
    UnnormalizerProcessorStep,
)
from lerobot.processor.factory import make_policy_processor_pipelines

from policies.runner import normalized_features
from world_model.backbone.model import tokenize

__all__ = [
    "MIN_STD",
    "BinarizeActionsProcessorStep",
    "make_vipra_pre_post_processors",
    "normalization_stats",
    "tokenize",
]

# Floor of every standard deviation: the demos hold roll and pitch constant (std 0), and LeRobot's
# normalizer only adds 1e-8, which would turn a 1e-4 rad deviation at evaluation into a 1e4 input.
MIN_STD = 1e-3


def normalization_stats(config, dataset_stats: dict) -> dict[str, dict[str, torch.Tensor]]:
    """The mean and the floored std of every normalized feature, checked against the policy's shapes.
    LeRobot's normalizer silently passes through a key without statistics: here it is an error."""
    features = {**config.input_features, **config.output_features}
    stats = {}
    for key in normalized_features(config, features):
        entry = dataset_stats.get(key) or {}
        if not {"mean", "std"} <= set(entry):
            raise ValueError(
                f"dataset stats need mean and std of {key!r}; got {sorted(entry) if entry else 'nothing'} "
                f"for it (stats hold {sorted(dataset_stats)})"
            )
        mean = torch.as_tensor(entry["mean"], dtype=torch.float32).flatten()
        std = torch.as_tensor(entry["std"], dtype=torch.float32).flatten()
        dim = features[key].shape[0]
        if mean.shape != (dim,) or std.shape != (dim,):
            raise ValueError(
                f"statistics of {key!r} have shapes {tuple(mean.shape)} / {tuple(std.shape)}, expected ({dim},)"
            )
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ValueError(f"statistics of {key!r} are not finite: mean {mean}, std {std}")
        stats[key] = {"mean": mean, "std": std.clamp_min(MIN_STD)}
    return stats


@ProcessorStepRegistry.register(name="vipra_binarize_actions")
@dataclass
class BinarizeActionsProcessorStep(PolicyActionProcessorStep):
    """Snaps the binary action dimensions (the gripper's closure command) to the nearer of 0 and 1, in
    the action's own units: a sampled 0.7 would squeeze with part of the force and drop what it holds."""

    dims: list[int] = field(default_factory=list)
    threshold: float = 0.5

    def action(self, action: torch.Tensor) -> torch.Tensor:
        if not self.dims:
            return action
        action = action.clone()
        action[..., self.dims] = (action[..., self.dims] > self.threshold).to(action.dtype)
        return action

    def get_config(self) -> dict:
        return {"dims": list(self.dims), "threshold": self.threshold}

    def transform_features(self, features):
        return features


def make_vipra_pre_post_processors(config, dataset_stats: dict | None = None):
    """LeRobot's processor pair for the policy (found by this name through the plugin), built from the
    dataset's statistics; lerobot-train calls it with the dataset's, the project's trainer with those
    of its demos. Loading a trained policy reads the saved pair instead (make_pre_post_processors with
    `pretrained_path`)."""
    if dataset_stats is None:
        raise ValueError(
            "the vipra processors normalize with the dataset's statistics: pass dataset_stats, or load a "
            "trained policy's processors from its folder (make_pre_post_processors(pretrained_path=...))"
        )
    stats = normalization_stats(config, dataset_stats)
    return make_policy_processor_pipelines(
        input_steps=[
            RenameObservationsProcessorStep(rename_map={}),
            AddBatchDimensionProcessorStep(),
            DeviceProcessorStep(device=config.device),
            NormalizerProcessorStep(
                features={**config.input_features, **config.output_features},
                norm_map=config.normalization_mapping,
                stats=stats,
            ),
        ],
        output_steps=[
            UnnormalizerProcessorStep(
                features=config.output_features, norm_map=config.normalization_mapping, stats=stats
            ),
            BinarizeActionsProcessorStep(dims=list(config.binary_action_dims)),
            DeviceProcessorStep(device="cpu"),
        ],
    )
