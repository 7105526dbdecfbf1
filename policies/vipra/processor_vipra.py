"""Pre- and post-processing of the ViPRA-style policy: normalization of state and actions, and the
instruction's word ids.

The statistics are buffers of the policy, so they travel inside `model.safetensors`. They start as
NaN: a policy whose statistics were never set (or a checkpoint that lacks them) refuses to run rather
than normalizing with made-up values, which is what LeRobot's processors do when built without a
pretrained path.
"""

import torch
from torch import nn

from world_model.backbone.model import tokenize

__all__ = ["Normalizer", "make_vipra_pre_post_processors", "tokenize"]


class Normalizer(nn.Module):
    """Mean/std normalization of one feature; `std` is floored so constant dimensions stay finite."""

    def __init__(self, name: str, dim: int, min_std: float = 1e-3):
        super().__init__()
        self.name, self.min_std = name, min_std
        self.register_buffer("mean", torch.full((dim,), float("nan")))
        self.register_buffer("std", torch.full((dim,), float("nan")))

    def set_stats(self, mean, std) -> None:
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if mean.shape != self.mean.shape or std.shape != self.std.shape:
            raise ValueError(
                f"statistics of {self.name!r} have shapes {tuple(mean.shape)} / {tuple(std.shape)}, "
                f"expected ({len(self.mean)},)"
            )
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ValueError(f"statistics of {self.name!r} are not finite: mean {mean}, std {std}")
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(self.min_std))

    def check(self) -> None:
        if not (torch.isfinite(self.mean).all() and torch.isfinite(self.std).all()):
            raise RuntimeError(
                f"normalization statistics of {self.name!r} are missing: train the policy with a dataset "
                "(policies.vipra.train) or load a checkpoint that holds them"
            )

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        self._check_dim(x)
        return (x - self.mean) / self.std

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        self._check_dim(x)
        return x * self.std + self.mean

    def _check_dim(self, x: torch.Tensor) -> None:
        if x.shape[-1] != len(self.mean):
            raise ValueError(
                f"{self.name!r} has {x.shape[-1]} dimensions, the policy was built for {len(self.mean)}"
            )


def make_vipra_pre_post_processors(config, dataset_stats: dict | None = None):
    """LeRobot's processor pair for `lerobot-train` / `lerobot-eval` (found by this name through the
    plugin): renaming, batching and device placement only. Normalization is not a processor step here:
    its statistics are buffers of the policy (set from `dataset_stats` when the policy is built), so
    they travel inside model.safetensors and a checkpoint cannot lose them."""
    from lerobot.processor import (
        AddBatchDimensionProcessorStep,
        DeviceProcessorStep,
        RenameObservationsProcessorStep,
    )
    from lerobot.processor.factory import make_policy_processor_pipelines

    return make_policy_processor_pipelines(
        input_steps=[
            RenameObservationsProcessorStep(rename_map={}),
            AddBatchDimensionProcessorStep(),
            DeviceProcessorStep(device=config.device),
        ],
        output_steps=[DeviceProcessorStep(device="cpu")],
    )
