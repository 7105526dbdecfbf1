"""The neural simulator: a world model of the tabletop suite in two parts, a state model that carries the
physics and a video model that draws it, and the judges that read success off them.

    states = StateDynamics(NeuralSimConfig())
    robot_change, attach_logit, free_change = states(x, actions, geo)  # x (B, 15), actions, geo (B, 14)
    dynamics = NeuralDynamics(NeuralSimConfig())
    frame = dynamics(prev, frame, cond)                                # next frame (B, 3, H, W) in [0, 1]
    renderer = NeuralRenderer(NeuralSimConfig(video="render"))
    frame = renderer(first, cond)                                      # frame t from frame 0, cond(0, t)
    judge = SuccessJudge(NeuralSimConfig())
    success_logit, grasp_logit = judge(x, geo)

StateDynamics is an MLP over the robot state and the object poses (the privileged `environment_state`
the scripted experts read): given the action and the one before, it predicts their change, with the
carry built in (a held object moves with the hand), so grasps, carries and drops live in a compact state
that does not blur; world_model.neural_sim.dynamics.state_step turns its outputs into the next state.
`geometry_features` hands it what contacts depend on (object to hand, target to object, grasp angle)
and the object yaws as angles. NeuralDynamics draws frame t+1 from frames t-1
and t, conditioned on the states before and after the step and the action, as a warp of frame t by a
predicted flow plus a residual (the latent action model's decoder, conditioned on states and actions
instead of latent codes); states and actions condition every level of a small conv U-Net through FiLM.
With `video: render` the video model is a NeuralRenderer instead: it draws frame t from the episode's
first frame, conditioned on the states at 0 and t, and no drawn frame is fed back, so its pixel errors
do not compound over an episode (the state model carries the episode, as a world model's decoder reads
its latent state); coordinate channels let it draw where a state puts the hand and the objects.
SuccessJudge is the classifier trained on the sim's labels that decides each imagined episode (success,
and fingers on the object). FrameProbe reads the world state back off a frame: it measures how faithful
the imagined frames are (the end-effector trajectory of EWMBench) and plays no part in the rollout.
"""

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from world_model.layers import warp  # backward warp by a flow in pixels, as the latent action model's decoder

STATE_DIM, ENV_STATE_DIM, ACTION_DIM = 7, 8, 7  # robot state, object poses, action
WORLD_DIM = STATE_DIM + ENV_STATE_DIM  # the state model's state: robot, then objects
GEO_DIM = 14  # geometry_features
COND_DIM = 2 * WORLD_DIM + ACTION_DIM  # the video model's conditioning: state before, action, state after
OBJECT_YAWS = [10, 14]  # world-state entries that are object yaws in [-pi, pi): they wrap around
OBJECT_YAW_MASK = torch.zeros(WORLD_DIM, dtype=torch.bool)
OBJECT_YAW_MASK[OBJECT_YAWS] = True
VIDEO_MODELS = ("warp", "render")


@dataclass
class NeuralSimConfig:
    image_size: int = 64
    width: int = 16  # channels at full resolution, doubled at each of `levels` downsamplings
    levels: int = 3  # 64 -> 32 -> 16 -> 8
    blocks: int = 2  # residual blocks at the bottleneck
    cond_dim: int = 128  # embedding of (states, action)
    probe_width: int = 32
    state_width: int = 256  # hidden units of the state model and the judge
    state_layers: int = 3
    video: str = "warp"  # warp: frame t+1 from the drawn t-1, t | render: frame t from frame 0 and states

    def __post_init__(self):
        if self.video not in VIDEO_MODELS:
            raise ValueError(f"video model {self.video!r} is not one of {VIDEO_MODELS}")
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
    def __init__(self, cfg: NeuralSimConfig, in_channels: int = 6):
        super().__init__()
        self.cfg = cfg
        w, L, D = cfg.width, cfg.levels, cfg.cond_dim
        self.cond = nn.Sequential(nn.Linear(COND_DIM, D), nn.SiLU(), nn.Linear(D, D))
        self.stem = FiLMBlock(in_channels, w, D)
        self.down = nn.ModuleList([FiLMBlock(w * 2**i, w * 2 ** (i + 1), D, stride=2) for i in range(L)])
        c = w * 2**L
        self.mid = nn.ModuleList([FiLMBlock(c, c, D) for _ in range(cfg.blocks)])
        # Up level i: x (w 2^(i+1) channels) upsampled and joined with the skip of that resolution (w 2^i).
        self.up = nn.ModuleList([FiLMBlock(3 * w * 2**i, w * 2**i, D) for i in reversed(range(L))])
        self.head = nn.Conv2d(w, 5, 3, padding=1)  # flow (2) + residual (3)
        nn.init.zeros_(self.head.weight)  # untrained: the next frame is frame t
        nn.init.zeros_(self.head.bias)

    def forward(self, prev: torch.Tensor, frame: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """prev, frame (B, 3, H, W) in [0, 1]; cond (B, COND_DIM), normalised (video_condition) -> next frame."""
        return self.draw(torch.cat([prev, frame], dim=1), frame, cond)

    def draw(self, inputs: torch.Tensor, base: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The U-Net over inputs (B, C, H, W) -> `base` (B, 3, H, W) warped by its flow plus its residual."""
        cond = self.cond(cond)  # (B, D)
        x = self.stem(inputs, cond)  # (B, w, H, W)
        skips = [x]
        for block in self.down:
            x = block(x, cond)
            skips.append(x)
        for block in self.mid:
            x = block(x, cond)  # (B, w 2^L, H / 2^L, W / 2^L)
        for level, block in zip(reversed(range(self.cfg.levels)), self.up, strict=True):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = block(torch.cat([x, skips[level]], dim=1), cond)  # (B, w 2^level, H / 2^level, ...)
        out = self.head(x)  # (B, 5, H, W)
        flow, residual = out[:, :2] * 4.0, out[:, 2:]  # flows of a few pixels per step
        return (warp(base, flow) + residual).clamp(0, 1)


class NeuralRenderer(NeuralDynamics):
    """Frame t from the episode's first frame (the scene: lighting, distractors, where things began) and
    the states at 0 and t; pixel coordinates enter as two channels (CoordConv), so the FiLM conditioning
    can place the hand and the objects where the state puts them. Untrained, it draws the first frame."""

    def __init__(self, cfg: NeuralSimConfig):
        super().__init__(cfg, in_channels=3 + 2)
        ramp = torch.linspace(-1, 1, cfg.image_size)
        coords = torch.stack(torch.meshgrid(ramp, ramp, indexing="ij"))[None]  # (1, 2, H, W)
        self.register_buffer("coords", coords, persistent=False)

    def forward(self, first: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """first (B, 3, H, W) in [0, 1]; cond (B, COND_DIM): video_condition(state 0, action t-1, state t)."""
        coords = self.coords.expand(len(first), -1, -1, -1)  # (B, 2, H, W) rows, columns in [-1, 1]
        return self.draw(torch.cat([first, coords], dim=1), first, cond)


def video_condition(world: torch.Tensor, action: torch.Tensor, next_world: torch.Tensor) -> torch.Tensor:
    """What a frame step is conditioned on: normalised states (B, 15) before and after, action (B, 7)."""
    return torch.cat([world, action, next_world], dim=-1)  # (B, COND_DIM)


# ---------------------------------------------------------------------------------------------- states
def geometry_features(world_raw: torch.Tensor) -> torch.Tensor:
    """(..., 15) raw robot state and object poses -> (..., GEO_DIM) what contacts depend on: object minus
    hand and target minus object (decimetres), the object's yaw against the hand's (modulo a half turn:
    two fingers) and against the target's; and the two object yaws as sines and cosines, since their raw
    values jump at +-pi."""
    hand, hand_yaw = world_raw[..., 0:3], world_raw[..., 5]
    src, src_yaw = world_raw[..., 7:10], world_raw[..., 10]
    tgt, tgt_yaw = world_raw[..., 11:14], world_raw[..., 14]
    angles = torch.stack([2 * (src_yaw - hand_yaw), src_yaw - tgt_yaw, src_yaw, tgt_yaw], dim=-1)
    return torch.cat([10 * (src - hand), 10 * (tgt - src), angles.sin(), angles.cos()], dim=-1)


def wrap_angle(angle: torch.Tensor) -> torch.Tensor:
    return torch.remainder(angle + torch.pi, 2 * torch.pi) - torch.pi


def mlp(d_in: int, width: int, layers: int, d_out: int) -> nn.Sequential:
    dims = [d_in] + [width] * layers
    hidden = [m for a, b in zip(dims[:-1], dims[1:], strict=True) for m in (nn.Linear(a, b), nn.SiLU())]
    return nn.Sequential(*hidden, nn.Linear(width, d_out))


class StateDynamics(nn.Module):
    """One step of the world state, with the carry built in: the source object moves with the hand by the
    probability that the hand holds it, plus a free residual (drops, pushes, settling).

    (normalised world state (B, 15), normalised actions at t and t-1 (B, 14), geometry features (B, GEO_DIM))
    -> change of the normalised robot state (B, 7), attachment logit (B, 1), free change of the
    normalised object poses (B, 8). The last layer starts at zero, attachment unlikely: nothing moves."""

    def __init__(self, cfg: NeuralSimConfig):
        super().__init__()
        self.net = mlp(WORLD_DIM + 2 * ACTION_DIM + GEO_DIM, cfg.state_width, cfg.state_layers, WORLD_DIM + 1)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        with torch.no_grad():
            self.net[-1].bias[STATE_DIM] = -4.0

    def forward(
        self, world: torch.Tensor, actions: torch.Tensor, geo: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net(torch.cat([world, actions, geo], dim=-1))  # (B, 16)
        return out[:, :STATE_DIM], out[:, STATE_DIM : STATE_DIM + 1], out[:, STATE_DIM + 1 :]


class SuccessJudge(nn.Module):
    """(normalised world state (B, 15), geometry features (B, GEO_DIM)) -> success and grasp logits (B,), (B,)."""

    def __init__(self, cfg: NeuralSimConfig):
        super().__init__()
        self.net = mlp(WORLD_DIM + GEO_DIM, cfg.state_width, 2, 2)

    def forward(self, world: torch.Tensor, geo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(torch.cat([world, geo], dim=-1))
        return out[:, 0], out[:, 1]


# ---------------------------------------------------------------------------------------------- probe
class FrameProbe(nn.Module):
    """A CNN reading the normalised world state (B, 15), robot and objects, off one frame (B, 3, H, W)."""

    def __init__(self, cfg: NeuralSimConfig):
        super().__init__()
        w = cfg.probe_width
        layers, c = [], 3
        for i in range(4):  # 64 -> 4
            layers += [nn.Conv2d(c, w * 2**i, 3, 2, 1), nn.GroupNorm(8, w * 2**i), nn.SiLU()]
            c = w * 2**i
        self.trunk = nn.Sequential(*layers, nn.Flatten())
        feat = c * (cfg.image_size // 16) ** 2
        self.head = nn.Sequential(nn.Linear(feat, 256), nn.SiLU(), nn.Linear(256, WORLD_DIM))

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(frame))  # (B, 15)


def build_modules(cfg: NeuralSimConfig) -> dict[str, nn.Module]:
    """The simulator's parts, by the names their checkpoint files carry."""
    return {
        "states": StateDynamics(cfg),
        "judge": SuccessJudge(cfg),
        "dynamics": NeuralRenderer(cfg) if cfg.video == "render" else NeuralDynamics(cfg),  # the video model
        "probe": FrameProbe(cfg),
    }
