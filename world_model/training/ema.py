"""An exponential moving average of a model's weights (diffusers' EMAModel with its warm-up: decay
1 - (1 + step)^-power, capped at `decay`), as diffusion_policy and openpi keep one.

The average lives in a copy of the model, so training checkpoints save it as one more module and
the exported model can be the average."""

import copy

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float, power: float):
        from diffusers.training_utils import EMAModel

        self.model = copy.deepcopy(model)  # holds the averaged weights between checkpoints
        self.ema = EMAModel(model.parameters(), decay=decay, use_ema_warmup=True, power=power)

    def resume(self, step: int) -> None:
        """Continue from the averaged weights restored into `self.model` at `step`."""
        self.ema.shadow_params = [p.detach().clone() for p in self.model.parameters()]
        self.ema.optimization_step = step

    def step(self, model: nn.Module) -> None:
        self.ema.step(model.parameters())

    @torch.no_grad()
    def averaged(self, model: nn.Module) -> nn.Module:
        """The copy, holding the current average of `model`'s parameters and its current buffers (a
        codebook's usage counts, normalization statistics: state, not weights to average)."""
        self.ema.copy_to(self.model.parameters())
        for name, live in model.named_buffers():
            owner, _, leaf = name.rpartition(".")
            self.model.get_submodule(owner)._buffers[leaf] = live.detach().clone()  # shapes may change
        return self.model
