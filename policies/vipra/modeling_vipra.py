"""ViPRA-style policy: the video-prediction backbone reads frames t-1, t and the instruction; a chunked
flow-matching decoder turns its context (pooled patches, instruction, predicted latent actions) and the
robot state into H actions. LeRobot's `PreTrainedPolicy` contract. With `context="state"` (state_fm,
the privileged ceiling) the same decoder reads an MLP of the robot state and object poses instead.

The policy works in normalized units, as LeRobot's policies do: its preprocessor normalizes the state
and the action, its postprocessor maps sampled actions back to the dataset's units and snaps the
gripper (processor_vipra). `make_policy` loads both with the weights.

    batch: observation.images.image (B, 2, 3, H, W) in [0, 1] (frames t-1, t; or (B, 3, H, W) at
           inference, where the policy keeps the previous frame), observation.state (B, S), task [str] * B,
           and for training action (B, H, A), action_is_pad (B, H); state and action normalized; with
           waypoint_weight > 0 also waypoint (B, 3) metres and waypoint_is_pad (B,) (train_policy)
    forward(batch) -> (loss, {"fm_loss", "shortcut_loss"[, "waypoint_loss"]})
    predict_action_chunk(batch) -> (B, H, A)      select_action(batch) -> (B, A), replanning every n steps
"""

import math
from collections import deque
from pathlib import Path

import torch
import torch.nn.functional as F
from lerobot.policies.pretrained import PreTrainedPolicy
from safetensors.torch import load_file
from torch import nn

from policies.flow_matching import (
    euler_sample,
    interpolate,
    sample_time,
    shortcut_targets,
    steps_to_index,
    target_velocity,
)
from policies.runner import ProcessedPolicy
from policies.vipra.configuration_vipra import ACTION_KEY, ENV_STATE_KEY, STATE_KEY, VipraConfig
from policies.vipra.processor_vipra import tokenize
from world_model.backbone.model import BackboneConfig, VideoBackbone, load_backbone
from world_model.layers import Attention

WAYPOINT_KEY = "waypoint"  # (B, 3) metres: the hand's offset to its next gripper event (training only)
WAYPOINT_PAD_KEY = "waypoint_is_pad"  # (B,) True where no gripper event follows (after the release)
WAYPOINT_SCALE = 10.0  # the head predicts decimetres: offsets of up to ~0.4 m become O(1)


def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 100.0) -> torch.Tensor:
    """(B,) in [0, 1] -> (B, dim) sin/cos features (periods 2/max_period .. 2)."""
    freqs = torch.exp(-math.log(max_period) * torch.arange(dim // 2, device=t.device) / (dim // 2))
    angles = math.pi * t[:, None] * freqs * max_period / 2
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class DecoderBlock(nn.Module):
    """Self-attention over the action tokens, cross-attention to the context, MLP (pre-norm)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm_self, self.self_attn = nn.LayerNorm(dim), Attention(dim, heads)  # few ops: latency
        self.norm_cross = nn.LayerNorm(dim)
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def memory(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the context (B, M, C), computed once per chunk and reused by every step."""
        B, M, C = context.shape
        k, v = self.kv(context).view(B, M, 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        return k, v  # (B, heads, M, C/heads) each

    def forward(self, x: torch.Tensor, memory: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        B, L, C = x.shape
        x = x + self.self_attn(self.norm_self(x))
        q = self.q(self.norm_cross(x)).view(B, L, self.heads, C // self.heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, *memory)  # (B, heads, L, C/heads)
        x = x + self.proj(y.transpose(1, 2).reshape(B, L, C))
        return x + self.mlp(self.norm_mlp(x))


class ActionDecoder(nn.Module):
    """Velocity field over a chunk: v(noisy actions (B, H, A), t, step size; context, state) -> (B, H, A)."""

    def __init__(self, cfg: VipraConfig, context_dim: int, levels: int):
        super().__init__()
        C = cfg.dim
        self.action_in = nn.Linear(cfg.action_dim, C)
        self.time_mlp = nn.Sequential(nn.Linear(2 * C, C), nn.SiLU(), nn.Linear(C, C))
        self.step_embed = nn.Embedding(levels + 1, C)  # index 0: d = 0 (plain flow matching)
        self.pos = nn.Parameter(torch.randn(1, cfg.chunk_size, C) * 0.02)
        self.context_in = nn.Linear(context_dim, C)
        self.state_in = nn.Linear(cfg.state_dim, C)
        self.waypoint_in = nn.Linear(3, C) if cfg.waypoint_weight > 0 else None
        self.blocks = nn.ModuleList(DecoderBlock(C, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(C)
        self.out = nn.Linear(C, cfg.action_dim)

    def memory(
        self, context: torch.Tensor, state: torch.Tensor, waypoint: torch.Tensor | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """context (B, M, C_bb), normalized state (B, S), the predicted waypoint (B, 3) or None -> per-block
        keys/values of M + 1 (+ 1) tokens."""
        tokens = [self.context_in(context), self.state_in(state)[:, None]]
        if waypoint is not None:
            tokens.append(self.waypoint_in(waypoint)[:, None])
        tokens = torch.cat(tokens, dim=1)
        return [block.memory(tokens) for block in self.blocks]

    def forward(self, x, t, d_index, memory) -> torch.Tensor:
        h = self.action_in(x) + self.pos
        cond = self.time_mlp(sinusoidal(t, 2 * h.shape[-1]))
        h = h + (cond + self.step_embed(d_index))[:, None]
        for block, mem in zip(self.blocks, memory, strict=True):
            h = block(h, mem)
        return self.out(self.norm(h))


class WaypointHead(nn.Module):
    """Where the hand goes next: a learned query reads the context tokens (B, M, C), an MLP of what it
    read and the normalized state (B, S) -> (B, 3) the offset to the next gripper event, in decimetres."""

    def __init__(self, dim: int, heads: int, state_dim: int, hidden: int = 256):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.read = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(
            nn.Linear(dim + state_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, 3),
        )  # fmt: skip

    def forward(self, context: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        read = self.read(self.query.expand(len(context), -1, -1), context, context, need_weights=False)[0]
        return self.mlp(torch.cat([read[:, 0], state], dim=-1))


class StateContext(nn.Module):
    """state_fm's context in place of the backbone: (B, 2, C) tokens, an MLP of the normalized robot
    state and object poses (so it can form hand-to-object offsets) and the instruction's mean word."""

    def __init__(self, cfg: VipraConfig):
        super().__init__()
        hidden = cfg.state_encoder_hidden
        self.mlp = nn.Sequential(
            nn.Linear(cfg.state_dim + cfg.env_state_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, cfg.dim),
        )
        self.words = nn.EmbeddingBag(cfg.vocab_size, cfg.dim, mode="mean", padding_idx=0)

    def forward(self, state: torch.Tensor, env_state: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        poses = self.mlp(torch.cat([state, env_state], dim=-1))  # (B, C)
        return torch.stack([poses, self.words(words)], dim=1)  # (B, 2, C)


class VipraPolicy(PreTrainedPolicy):
    config_class = VipraConfig
    name = "vipra"

    def __init__(self, config: VipraConfig, **_):
        # (**_: lerobot's make_policy also passes dataset_meta / dataset_stats, which the processors use)
        super().__init__(config)
        config.validate_features()
        # Loaded before the modules below are built, so their initial weights do not depend on it.
        pretrained = load_backbone(config.pretrained_backbone) if config.pretrained_backbone else None
        if config.context == "state":
            self.backbone = None
            self.state_context = StateContext(config)
            context_dim = config.dim
        else:
            self.backbone = VideoBackbone(BackboneConfig(**config.backbone))
            context_dim = self.backbone.cfg.dim
        self.decoder = ActionDecoder(config, context_dim, config.shortcut_levels)
        self.waypoint_head = (
            WaypointHead(context_dim, self.backbone.cfg.heads, config.state_dim)
            if config.waypoint_weight > 0
            else None
        )
        if pretrained is not None:
            self.backbone.load_state_dict(pretrained.state_dict())
        self.reset()

    # ------------------------------------------------------------------------------------------ setup
    def get_optim_params(self) -> list[dict]:
        scale = self.config.backbone_lr_scale
        groups = [{"params": [p for n, p in self.named_parameters() if not n.startswith("backbone.")]}]
        if scale > 0 and self.backbone is not None:
            groups.append(
                {"params": list(self.backbone.parameters()), "lr": self.config.optimizer_lr * scale}
            )
        return groups

    def reset(self) -> None:
        """Call at every episode start: forgets queued actions and the previous frame."""
        self._queue: deque[torch.Tensor] = deque(maxlen=self.config.n_action_steps)
        self._prev_frame: torch.Tensor | None = None

    # ------------------------------------------------------------------------------------------ encoding
    def _context_frames(self, batch: dict) -> torch.Tensor:
        """(B, 2, 3, H, W) frames t-1, t from the batch, or from the current frame and the one kept."""
        frames = batch[self.config.image_key]
        if frames.ndim == 5:
            return frames[:, -2:]
        if frames.ndim != 4:
            raise ValueError(
                f"{self.config.image_key!r} must be (B, 3, H, W) or (B, 2, 3, H, W), got {tuple(frames.shape)}"
            )
        prev = self._prev_frame
        if prev is None or prev.shape != frames.shape:
            prev = frames  # an episode's first step: no motion yet, as in training
        return torch.stack([prev, frames], dim=1)

    def _vector(self, batch: dict, key: str) -> torch.Tensor:
        """(B, D) at step t of a (normalized) state-like feature, its size checked against the config."""
        x = batch[key]
        x = x[:, -1] if x.ndim == 3 else x  # (B, n_obs_steps, D) from LeRobot's loader
        dim = self.config.input_features[key].shape[0]
        if x.ndim != 2 or x.shape[-1] != dim:
            raise ValueError(f"{key!r} must be (B, {dim}) for this policy, got {tuple(x.shape)}")
        return x

    def _encode(self, batch: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The decoder's memory for a batch: backbone (or privileged state) context + state."""
        return self._encode_with_waypoint(batch)[0]

    def _encode_with_waypoint(self, batch: dict) -> tuple[list, torch.Tensor | None]:
        """The decoder's memory and the predicted waypoint (B, 3) in decimetres (None without the head)."""
        state = self._vector(batch, STATE_KEY)
        if self.backbone is None:
            words = tokenize(list(batch["task"]), self.config.vocab_size).to(state.device)
            context = self.state_context(state, self._vector(batch, ENV_STATE_KEY), words)
            return self.decoder.memory(context, state), None
        frames = self._context_frames(batch)
        words = tokenize(list(batch["task"]), self.backbone.cfg.vocab_size).to(frames.device)
        context = self.backbone.features(self.backbone(frames, words))
        waypoint = self.waypoint_head(context, state) if self.waypoint_head is not None else None
        return self.decoder.memory(context, state, waypoint), waypoint

    # ------------------------------------------------------------------------------------------ training
    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        actions = batch[ACTION_KEY]  # normalized by the preprocessor
        if actions.ndim != 3 or actions.shape[1:] != (cfg.chunk_size, cfg.action_dim):
            raise ValueError(
                f"{ACTION_KEY!r} must be (B, {cfg.chunk_size}, {cfg.action_dim}), got {tuple(actions.shape)}"
            )
        keep = (
            ~batch["action_is_pad"]
            if "action_is_pad" in batch
            else torch.ones(actions.shape[:2], dtype=torch.bool)
        )
        keep = keep.to(actions.device)[..., None].float()
        memory, waypoint = self._encode_with_waypoint(batch)
        B = len(actions)

        noise = torch.randn_like(actions)
        t = sample_time(B, cfg.time_alpha, device=actions.device)
        zeros = torch.zeros(B, dtype=torch.long, device=actions.device)
        v = self.decoder(interpolate(actions, noise, t), t, zeros, memory)
        fm_loss = ((v - target_velocity(actions, noise)) ** 2 * keep).sum() / (keep.sum() * cfg.action_dim)

        n = int(round(cfg.shortcut_fraction * B))
        shortcut_loss = torch.zeros((), device=actions.device)
        if n > 0:
            sub = [(key[:n], value[:n]) for key, value in memory]  # the first n samples
            x_t, t_s, d_index, target = shortcut_targets(
                lambda x, tt, d: self.decoder(x, tt, d, sub), actions[:n], noise[:n], cfg.shortcut_levels
            )
            v_s = self.decoder(x_t, t_s, d_index, sub)
            shortcut_loss = ((v_s - target) ** 2 * keep[:n]).sum() / (keep[:n].sum() * cfg.action_dim)
        loss = fm_loss + shortcut_loss
        terms = {"fm_loss": fm_loss.item(), "shortcut_loss": shortcut_loss.item()}
        if waypoint is not None:
            waypoint_loss = self.waypoint_loss(waypoint, batch)
            loss = loss + cfg.waypoint_weight * waypoint_loss
            terms["waypoint_loss"] = waypoint_loss.item()
        return loss, terms

    def waypoint_loss(self, predicted: torch.Tensor, batch: dict) -> torch.Tensor:
        """MSE (decimetres^2, per axis) of the predicted waypoint where the demos have one."""
        if WAYPOINT_KEY not in batch:
            raise KeyError(
                f"waypoint_weight > 0 trains on batch[{WAYPOINT_KEY!r}] (B, 3) and [{WAYPOINT_PAD_KEY!r}] "
                "(B,): the hand's offset to its next gripper event (policies.train_policy adds them)"
            )
        target = batch[WAYPOINT_KEY].to(predicted) * WAYPOINT_SCALE
        keep = (~batch[WAYPOINT_PAD_KEY].to(predicted.device))[:, None].float()
        return ((predicted - target) ** 2 * keep).sum() / (keep.sum() * 3).clamp_min(1)

    # ------------------------------------------------------------------------------------------ inference
    @torch.inference_mode()  # cheaper than no_grad per op, which matters at batch 1
    def predict_action_chunk(self, batch: dict, noise: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H, A) normalized actions (the postprocessor maps them to the dataset's units); `noise`
        (B, H, A) fixes the sample."""
        cfg = self.config
        memory = self._encode(batch)
        B = memory[0][0].shape[0]
        if noise is None:
            noise = torch.randn(B, cfg.chunk_size, cfg.action_dim, device=memory[0][0].device)
        steps = cfg.num_few_steps if cfg.few_step else cfg.num_inference_steps
        d_index = steps_to_index(steps, cfg.few_step)
        return euler_sample(lambda x, t, d: self.decoder(x, t, d, memory), noise, steps, d_index)

    @torch.inference_mode()
    def select_action(self, batch: dict, noise: torch.Tensor | None = None) -> torch.Tensor:
        """(B, A): the next action of the current chunk; a new chunk every n_action_steps calls."""
        if not self._queue:
            chunk = self.predict_action_chunk(batch, noise)  # uses the previous frame kept below
            self._queue.extend(chunk[:, : self.config.n_action_steps].transpose(0, 1))
        if self.backbone is not None:
            frames = batch[self.config.image_key]
            self._prev_frame = frames if frames.ndim == 4 else frames[:, -1]
        return self._queue.popleft()

    # ------------------------------------------------------------------------------------------ loading
    def _save_pretrained(self, save_directory: Path, state_dict: dict | None = None) -> None:
        """The backbone's weights are in model.safetensors: the saved config does not send a later load
        back to the run folder they came from."""
        source, self.config.pretrained_backbone = self.config.pretrained_backbone, None
        try:
            super()._save_pretrained(save_directory, state_dict)
        finally:
            self.config.pretrained_backbone = source

    @classmethod
    def _load_as_safetensor(cls, model, model_file: str, map_location: str, strict: bool):
        """Strict loading with a clear error naming what differs: a checkpoint of another config."""
        state = load_file(model_file, device="cpu")
        own = model.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        wrong = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
        if missing or unexpected or wrong:
            raise ValueError(
                f"{model_file} does not match this policy's config: missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}, shapes differ for {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in wrong[:5]]}"
            )
        model.load_state_dict(state)
        return model


def make_policy(
    path: str | Path, task: str | None = None, device: str = "cpu", **overrides
) -> ProcessedPolicy:
    """Factory for the evaluation harness (`_target_: policies.vipra.make_policy`, `_partial_: true`):
    a trained policy from its folder (save_pretrained's files and the processor pair beside them), which
    takes and returns the dataset's units; `overrides` set config fields (e.g. few_step=true)."""
    path = Path(path)
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"no policy at {path} (expected model.safetensors and config.json from save_pretrained)"
        )
    config = VipraConfig.from_pretrained(path)
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ValueError(f"VipraConfig has no field {key!r}")
        setattr(config, key, value)
    return ProcessedPolicy.from_pretrained(path, device=device, config=config)
