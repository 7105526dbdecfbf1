"""Inverse dynamics model: the robot's actions read off two frames (VPT's labeller).

Trained on the labelled demos (`world_model/idm/train.py`), then run over the actionless video to label
every transition with pseudo-actions (`world_model/idm/label.py`), which the backbone regresses as it does a
continuous latent action model's latents: the `ours_idm` variant, video that teaches the policy's own action
space through the few demos it is finetuned on.

    before, after (B, 3, H, W) in [0, 1]: frames t and t+k -> (B, k, A): the k actions between them,
    normalized by the demos' mean and std (`predict` returns them in the demos' units)
"""

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from world_model.training.checkpoint import load_trained


@dataclass
class IDMConfig:
    image_size: int = 64
    action_dim: int = 7
    frame_stride: int = 1  # frames t and t+k: the k actions in between
    channels: int = 32  # the first convolution's; the others have twice as many
    hidden: int = 256

    def __post_init__(self):
        if self.image_size % 16:
            raise ValueError(
                f"image_size must be a multiple of 16 (four stride-2 convolutions), got {self.image_size}"
            )
        if self.action_dim < 1 or self.frame_stride < 1:
            raise ValueError(
                f"action_dim and frame_stride must be >= 1, got {self.action_dim} and {self.frame_stride}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def transition_network(image_size: int, outputs: int, channels: int = 32, hidden: int = 256) -> nn.Sequential:
    """A small CNN from a transition's input (B, 6, S, S) (see `transition_input`) to (B, outputs)."""
    c, cells = channels, (image_size // 16) ** 2
    return nn.Sequential(
        nn.Conv2d(6, c, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(2 * c * cells, hidden), nn.ReLU(), nn.Linear(hidden, outputs),
    )  # fmt: skip


def transition_input(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Frames (B, 3, H, W) in [0, 1] -> (B, 6, H, W): the first frame and the change, scaled as the LAM's."""
    return torch.cat([before * 2 - 1, 4 * (after - before)], dim=1)


class InverseDynamics(nn.Module):
    def __init__(self, cfg: IDMConfig):
        super().__init__()
        self.cfg = cfg
        self.net = transition_network(
            cfg.image_size, cfg.frame_stride * cfg.action_dim, cfg.channels, cfg.hidden
        )
        # The demos' action statistics (set before training by `fit_statistics`, saved with the weights).
        self.register_buffer("action_mean", torch.zeros(cfg.action_dim))
        self.register_buffer("action_std", torch.ones(cfg.action_dim))
        self.register_buffer("action_varies", torch.ones(cfg.action_dim, dtype=torch.bool))

    def fit_statistics(self, actions: torch.Tensor, floor: float = 1e-3) -> None:
        """Normalize by the demos' actions (M, A); a dimension constant in them (the arm's roll and pitch
        here) is predicted as that constant, not as noise that would become unit-variance labels."""
        std = actions.std(0)
        self.action_mean.copy_(actions.mean(0))
        self.action_std.copy_(std.clamp_min(floor))
        self.action_varies.copy_(std > 1e-8)

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        size = self.cfg.image_size
        if before.shape != after.shape or before.ndim != 4 or before.shape[1:] != (3, size, size):
            raise ValueError(
                f"before and after must both be (B, 3, {size}, {size}); got {tuple(before.shape)} and "
                f"{tuple(after.shape)}"
            )
        out = self.net(transition_input(before, after))  # (B, k*A)
        return out.view(len(before), self.cfg.frame_stride, self.cfg.action_dim)

    def normalize(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions - self.action_mean) / self.action_std

    def compute_loss(self, before: torch.Tensor, after: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """MSE of the normalized actions (B, k, A), every dimension that varies weighed alike."""
        error = (self(before, after) - self.normalize(actions)).pow(2)
        return error[..., self.action_varies].mean()

    @torch.no_grad()
    def predict(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """(B, k, A) actions in the demos' units (a dimension constant in the demos: that constant)."""
        return self(before, after) * self.action_varies * self.action_std + self.action_mean


def load_idm(path: str | Path) -> InverseDynamics:
    """A trained inverse dynamics model from a run folder or its checkpoint folder, in eval mode."""
    modules, _ = load_trained(
        path, "inverse-dynamics", lambda config: {"model": InverseDynamics(IDMConfig(**config))}
    )
    return modules["model"]
