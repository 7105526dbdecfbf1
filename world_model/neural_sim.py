"""The neural simulator: an action-conditioned video model of the tabletop suite, and the probe that
reads states and success off its frames.

    dynamics = NeuralDynamics(NeuralSimConfig())
    frame, state = dynamics(prev, frame, state, action)     # one step: frames (B, 3, H, W) in [0, 1]
    probe = FrameProbe(NeuralSimConfig())
    out = probe(frame)                                      # agent state, object poses, success, grasp

NeuralDynamics predicts frame t+1 from frames t-1 and t, the robot state and the action at t, as a warp
of frame t by a predicted flow plus a residual (the latent action model's decoder, conditioned on real
actions instead of latent codes), and the next robot state as the current one plus a predicted change.
Actions and states condition every level of a small conv U-Net through FiLM. FrameProbe is a CNN on
one frame: the robot state, the source and target object poses (the privileged `environment_state`
the scripted experts read) and two logits, success and grasp: the judge of imagined episodes.
"""

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from world_model.lam import warp  # backward warp by a flow in pixels, as the latent action model's decoder

STATE_DIM, ENV_STATE_DIM, ACTION_DIM = 7, 8, 7


@dataclass
class NeuralSimConfig:
    image_size: int = 64
    width: int = 16  # channels at full resolution, doubled at each of `levels` downsamplings
    levels: int = 3  # 64 -> 32 -> 16 -> 8
    blocks: int = 2  # residual blocks at the bottleneck
    cond_dim: int = 128  # embedding of (state, action)
    probe_width: int = 32

    def __post_init__(self):
        if self.image_size % 2**self.levels:
            raise ValueError(f"image_size {self.image_size} is not divisible by 2**levels = {2**self.levels}")

    def to_dict(self) -> dict:
        return asdict(self)


class FiLMBlock(nn.Module):
    """conv -> GroupNorm -> scale/shift from the conditioning -> SiLU, with a residual when shapes allow."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride, 1)
        self.norm = nn.GroupNorm(8, c_out)
        self.film = nn.Linear(cond_dim, 2 * c_out)
        self.residual = c_in == c_out and stride == 1

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond)[:, :, None, None].chunk(2, dim=1)
        y = F.silu(self.norm(self.conv(x)) * (1 + scale) + shift)
        return x + y if self.residual else y


class NeuralDynamics(nn.Module):
    def __init__(self, cfg: NeuralSimConfig):
        super().__init__()
        self.cfg = cfg
        w, L, D = cfg.width, cfg.levels, cfg.cond_dim
        self.cond = nn.Sequential(nn.Linear(STATE_DIM + ACTION_DIM, D), nn.SiLU(), nn.Linear(D, D))
        self.stem = FiLMBlock(6, w, D)
        self.down = nn.ModuleList([FiLMBlock(w * 2**i, w * 2 ** (i + 1), D, stride=2) for i in range(L)])
        c = w * 2**L
        self.mid = nn.ModuleList([FiLMBlock(c, c, D) for _ in range(cfg.blocks)])
        # Up level i: x (w 2^(i+1) channels) upsampled and joined with the skip of that resolution (w 2^i).
        self.up = nn.ModuleList([FiLMBlock(3 * w * 2**i, w * 2**i, D) for i in reversed(range(L))])
        self.head = nn.Conv2d(w, 5, 3, padding=1)  # flow (2) + residual (3)
        nn.init.zeros_(self.head.weight)  # untrained: the next frame is frame t
        nn.init.zeros_(self.head.bias)
        self.state_head = nn.Sequential(nn.Linear(c + D, D), nn.SiLU(), nn.Linear(D, STATE_DIM))

    def forward(
        self, prev: torch.Tensor, frame: torch.Tensor, state: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """prev, frame (B, 3, H, W) in [0, 1]; state, action (B, 7), normalised -> next frame, next state."""
        cond = self.cond(torch.cat([state, action], dim=-1))  # (B, D)
        x = self.stem(torch.cat([prev, frame], dim=1), cond)  # (B, w, H, W)
        skips = [x]
        for block in self.down:
            x = block(x, cond)
            skips.append(x)
        for block in self.mid:
            x = block(x, cond)  # (B, w 2^L, H / 2^L, W / 2^L)
        bottleneck = x.mean(dim=(2, 3))
        for level, block in zip(reversed(range(self.cfg.levels)), self.up, strict=True):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = block(torch.cat([x, skips[level]], dim=1), cond)  # (B, w 2^level, H / 2^level, ...)
        out = self.head(x)  # (B, 5, H, W)
        flow, residual = out[:, :2] * 4.0, out[:, 2:]  # flows of a few pixels per step
        next_frame = (warp(frame, flow) + residual).clamp(0, 1)
        next_state = state + self.state_head(torch.cat([bottleneck, cond], dim=-1))
        return next_frame, next_state


@dataclass
class ProbeOutput:
    state: torch.Tensor  # (B, 7) normalised robot state
    env_state: torch.Tensor  # (B, 8) normalised object poses
    success_logit: torch.Tensor  # (B,)
    grasp_logit: torch.Tensor  # (B,) fingers on the source object in this frame


class FrameProbe(nn.Module):
    def __init__(self, cfg: NeuralSimConfig):
        super().__init__()
        w = cfg.probe_width
        layers, c = [], 3
        for i in range(4):  # 64 -> 4
            layers += [nn.Conv2d(c, w * 2**i, 3, 2, 1), nn.GroupNorm(8, w * 2**i), nn.SiLU()]
            c = w * 2**i
        self.trunk = nn.Sequential(*layers, nn.Flatten())
        feat = c * (cfg.image_size // 16) ** 2
        self.head = nn.Sequential(
            nn.Linear(feat, 256), nn.SiLU(), nn.Linear(256, STATE_DIM + ENV_STATE_DIM + 2)
        )

    def forward(self, frame: torch.Tensor) -> ProbeOutput:
        out = self.head(self.trunk(frame))  # (B, 17)
        s, e = STATE_DIM, STATE_DIM + ENV_STATE_DIM
        return ProbeOutput(out[:, :s], out[:, s:e], out[:, e], out[:, e + 1])


def probe_loss(out: ProbeOutput, state, env_state, success, grasp) -> tuple[torch.Tensor, dict]:
    """Regression of the normalised states, cross-entropy of the two flags."""
    terms = {
        "probe_state": F.mse_loss(out.state, state),
        "probe_env_state": F.mse_loss(out.env_state, env_state),
        "judge_bce": F.binary_cross_entropy_with_logits(out.success_logit, success),
        "grasp_bce": F.binary_cross_entropy_with_logits(out.grasp_logit, grasp),
    }
    return sum(terms.values()), terms
