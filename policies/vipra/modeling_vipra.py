"""ViPRA-style policy: the video-prediction backbone reads frames t-1, t and the instruction; a chunked
flow-matching decoder turns its context (pooled patches, instruction, predicted latent actions, and with
`waypoint_weight` where the gripper will close and open, found in the image) and the robot state into H
actions. LeRobot's `PreTrainedPolicy` contract. With `context="state"` (state_fm,
the privileged ceiling) the same decoder reads an MLP of the robot state and object poses instead.

The policy works in normalized units, as LeRobot's policies do: its preprocessor normalizes the state
and the action, its postprocessor maps sampled actions back to the dataset's units and snaps the
gripper (processor_vipra). `make_policy` loads both with the weights.

    batch: observation.images.image (B, 2, 3, H, W) in [0, 1] (frames t-1, t; or (B, 3, H, W) at
           inference, where the policy keeps the previous frame), observation.state (B, S), task [str] * B,
           and for training action (B, H, A), action_is_pad (B, H); state and action normalized; with
           waypoint_weight > 0 also waypoint (B, 2, 2) in [-1, 1] and waypoint_is_pad (B, 2) (train_policy)
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

from data.camera import PinholeCamera
from policies.flow_matching import (
    euler_sample,
    euler_span_targets,
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
from world_model.layers import (
    Attention,
    FiLMHeatmaps,
    heatmap_cross_entropy,
    heatmap_targets,
    soft_argmax,
)

WAYPOINT_EVENTS = ("close", "open")  # the waypoint maps: where the gripper next closes, next opens
HAND_NOW = "now"  # the hand anchor's map: where the hand is in the current frame (after the events')
WAYPOINT_KEY = (
    "waypoint"  # (B, 2, 2) x, y in [-1, 1]: where the hand is at those events, in the image (training)
)
WAYPOINT_PAD_KEY = "waypoint_is_pad"  # (B, 2) True where that event does not follow in the episode
# What a frozen backbone computed beforehand for the batch's frames (policies/feature_cache.py); when present
# the backbone is not run. Training only: a batch's frames must be the cached rows' own.
CACHED_CONTEXT_KEY = "cached_backbone_context"  # (B, N, C) the decoder's context tokens
CACHED_FMAP_KEY = "cached_backbone_fmap"  # (B, c, h, w) the conv stem's map (the waypoint maps read it)
TABLE_SCALE = 10.0  # metres on the table -> decimetres, O(1) inputs for the waypoint tokens' MLP


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
        self.blocks = nn.ModuleList(DecoderBlock(C, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(C)
        self.out = nn.Linear(C, cfg.action_dim)

    def memory(self, context: torch.Tensor, state: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """context (B, M, C_bb), normalized state (B, S) -> per-block keys/values of M + 1 tokens."""
        tokens = torch.cat([self.context_in(context), self.state_in(state)[:, None]], dim=1)
        return [block.memory(tokens) for block in self.blocks]

    def forward(self, x, t, d_index, memory) -> torch.Tensor:
        h = self.action_in(x) + self.pos
        cond = self.time_mlp(sinusoidal(t, 2 * h.shape[-1]))
        h = h + (cond + self.step_embed(d_index))[:, None]
        for block, mem in zip(self.blocks, memory, strict=True):
            h = block(h, mem)
        return self.out(self.norm(h))


def fourier(x: torch.Tensor, bands: int) -> torch.Tensor:
    """(..., D) in [-1, 1] -> (..., 2 * D * bands) sines and cosines at periods 2, 1, 1/2, ... (cm-scale
    differences in where a point is stay visible to the decoder)."""
    angles = math.pi * x[..., None] * 2.0 ** torch.arange(bands, device=x.device, dtype=x.dtype)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


class TablePoints(nn.Module):
    """Image points (B, M, 2) in [-1, 1] -> (B, M, 3) metres: where the calibrated camera's ray through each
    meets the horizontal plane at that point's height (one per map)."""

    def __init__(self, camera: PinholeCamera, heights: list[float]):
        super().__init__()
        self.half, self.focal = camera.image_size / 2, camera.focal
        self.register_buffer("rotation", torch.tensor(camera.rotation, dtype=torch.float32), persistent=False)
        self.register_buffer("origin", torch.tensor(camera.pos, dtype=torch.float32), persistent=False)
        self.register_buffer("heights", torch.tensor(heights, dtype=torch.float32), persistent=False)

    def forward(self, points: torch.Tensor, heights: torch.Tensor | None = None) -> torch.Tensor:
        """`heights` (B, M) metres: other planes than the maps' own."""
        heights = self.heights if heights is None else heights
        pixels = (points + 1) * self.half  # u right, v down
        rays = torch.stack(
            [(pixels[..., 0] - self.half) / self.focal, -(pixels[..., 1] - self.half) / self.focal,
             -torch.ones_like(pixels[..., 0])], dim=-1,
        ) @ self.rotation  # fmt: skip
        t = (heights - self.origin[2]) / rays[..., 2]  # (B, M)
        return self.origin + t[..., None] * rays


class WaypointHeatmaps(nn.Module):
    """Where the gripper will next close (on the object to pick) and open (over the place), as heatmaps on
    the conv stem's map, conditioned on the instruction, one map per event. Trained with cross-entropy
    against a Gaussian at the demos' own hand position at that event, projected with the camera's
    calibration: a detector of the object and the place. Each map's soft-argmax is one more token for the
    decoder, an MLP of its Fourier features, with a calibrated camera the point on the table in metres, and
    the robot state (so that it can form where to go from where the hand is, as state_fm's context does).
    With `hand_stats` (the hand anchor) one more map finds the hand in the current frame, and the events'
    table points move by where the state says the hand is minus where the camera sees it.

        fmap (B, c, g, g), instruction (B, C), normalized state (B, S) -> logits (B, M, g, g),
        points (B, M, 2) x, y in [-1, 1], tokens (B, E, C) for the E events (M = E, or E + 1 with the hand)
    """

    def __init__(
        self,
        channels: int,
        dim: int,
        state_dim: int,
        maps: int = 2,
        bands: int = 6,
        table: TablePoints | None = None,
        hand_stats: dict | None = None,
    ):
        super().__init__()
        if hand_stats is not None and table is None:
            raise ValueError("the hand anchor sees the hand on the table: it needs the calibrated camera")
        self.bands, self.table, self.events = bands, table, maps
        self.maps = FiLMHeatmaps(channels, dim, maps + (hand_stats is not None))
        self.hand_stats = hand_stats is not None
        if self.hand_stats:  # the state arrives normalized: the preprocessor's (x - mean) / (std + eps)
            self.register_buffer(
                "hand_mean", torch.tensor(hand_stats["mean"], dtype=torch.float32), persistent=False
            )
            self.register_buffer(
                "hand_std", torch.tensor(hand_stats["std"], dtype=torch.float32) + 1e-8, persistent=False
            )
        width = 4 * bands + (3 if table is not None else 0) + state_dim
        self.embed = nn.Sequential(nn.Linear(width, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.which = nn.Parameter(torch.randn(maps, dim) * 0.02)  # which event a token names

    def forward(self, fmap: torch.Tensor, instruction: torch.Tensor, state: torch.Tensor):
        logits = self.maps(fmap, instruction)
        points = soft_argmax(logits)
        events = points[:, : self.events]  # (B, E, 2); the hand's is the last map's
        features = [fourier(events, self.bands)]
        if self.table is not None:
            seen = self.table(events)  # (B, E, 3) metres
            if self.hand_stats:
                seen = seen + self.hand_offset(points[:, -1], state)[:, None]
            features.append(TABLE_SCALE * seen)
        features.append(state[:, None].expand(-1, events.shape[1], -1))
        return logits, points, self.embed(torch.cat(features, dim=-1)) + self.which

    def hand_offset(self, hand_point: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """(B, 3) where the state puts the hand minus where the camera's calibration sees the hand map's
        point (B, 2), on the plane at the hand's height: the calibration's error there (z: 0)."""
        hand = state[:, :3] * self.hand_std + self.hand_mean  # (B, 3) metres
        seen = self.table(hand_point[:, None], heights=hand[:, 2:3])[:, 0]
        return (hand - seen) * hand.new_tensor([1.0, 1.0, 0.0])


def waypoint_loss(logits: torch.Tensor, target: torch.Tensor, is_pad: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the heatmaps (B, M, g, g) against Gaussians at the target points (B, M, 2) in
    [-1, 1], averaged over the (sample, event) pairs that have one (is_pad (B, M) False)."""
    keep = ~is_pad
    if not keep.any():
        return logits.sum() * 0
    return heatmap_cross_entropy(logits[keep], heatmap_targets(target[keep].to(logits), logits.shape[-1]))


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
        self.waypoint_maps = None
        if config.waypoint_weight > 0:
            table = None
            if config.camera_calibration:
                camera = PinholeCamera.from_config(config.camera_calibration, self.backbone.cfg.image_size)
                table = TablePoints(camera, config.waypoint_heights)
            self.waypoint_maps = WaypointHeatmaps(
                self.backbone.cfg.stem_channels,
                context_dim,
                config.state_dim,
                len(WAYPOINT_EVENTS),
                table=table,
                hand_stats=config.hand_position_stats if config.hand_anchor else None,
            )
        if pretrained is not None:
            self.backbone.load_state_dict(pretrained.state_dict())
        if self.backbone is not None and config.backbone_lr_scale == 0:
            # Frozen: no gradients, so none enter the clipped norm either (the feature cache's loss equals this)
            self.backbone.requires_grad_(False)
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

    def _encode_with_waypoint(self, batch: dict) -> tuple[list, tuple | None]:
        """The decoder's memory and the waypoint maps' (logits (B, 2, g, g), points (B, 2, 2) in [-1, 1]),
        None without them."""
        state = self._vector(batch, STATE_KEY)
        if self.backbone is None:
            words = tokenize(list(batch["task"]), self.config.vocab_size).to(state.device)
            context = self.state_context(state, self._vector(batch, ENV_STATE_KEY), words)
            return self.decoder.memory(context, state), None
        words = tokenize(list(batch["task"]), self.backbone.cfg.vocab_size).to(state.device)
        context, fmap = self.backbone_features(batch, words)
        if self.waypoint_maps is None:
            return self.decoder.memory(context, state), None
        logits, points, tokens = self.waypoint_maps(fmap, self.backbone.word_embed(words), state)
        if self.config.decoder_reads == "waypoints":  # the instruction token, after the pooled ones
            pooled = (self.backbone.cfg.grid // self.backbone.cfg.pool) ** 2
            context = context[:, pooled : pooled + 1]
        return self.decoder.memory(torch.cat([context, tokens], dim=1), state), (logits, points)

    def backbone_features(self, batch: dict, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The backbone's context tokens (B, N, C) and stem map (B, c, h, w) or None, for the batch's frames
        t-1, t and words (B, W); or those a frozen backbone computed beforehand, when the batch has them."""
        if CACHED_CONTEXT_KEY in batch:
            return batch[CACHED_CONTEXT_KEY], batch.get(CACHED_FMAP_KEY)
        out = self.backbone(self._context_frames(batch), words)
        return self.backbone.features(out), out.fmap

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
            field = lambda x, tt, d: self.decoder(x, tt, d, sub)  # noqa: E731
            if cfg.shortcut_teacher_steps > 0:
                x_t, t_s, d_index, target = euler_span_targets(
                    field, actions[:n], noise[:n], cfg.shortcut_levels, cfg.shortcut_teacher_steps
                )
            else:
                x_t, t_s, d_index, target = shortcut_targets(
                    field, actions[:n], noise[:n], cfg.shortcut_levels
                )
            v_s = self.decoder(x_t, t_s, d_index, sub)
            shortcut_loss = ((v_s - target) ** 2 * keep[:n]).sum() / (keep[:n].sum() * cfg.action_dim)
        loss = fm_loss + shortcut_loss
        terms = {"fm_loss": fm_loss.item(), "shortcut_loss": shortcut_loss.item()}
        if waypoint is not None:
            if WAYPOINT_KEY not in batch:
                raise KeyError(
                    f"waypoint_weight > 0 trains on batch[{WAYPOINT_KEY!r}] (B, 2, 2) and "
                    f"[{WAYPOINT_PAD_KEY!r}] (B, 2): where the hand closes and opens next, in the image "
                    "(policies.train_policy adds them from the demos' states and the camera's calibration)"
                )
            if batch[WAYPOINT_KEY].shape[1] != waypoint[0].shape[1]:
                raise ValueError(
                    f"batch[{WAYPOINT_KEY!r}] has {batch[WAYPOINT_KEY].shape[1]} points per sample, the policy "
                    f"draws {waypoint[0].shape[1]} maps (hand_anchor={cfg.hand_anchor} adds the hand's: "
                    "train_policy's Waypoints.of(..., hand=True))"
                )
            heat = waypoint_loss(waypoint[0], batch[WAYPOINT_KEY], batch[WAYPOINT_PAD_KEY].to(actions.device))
            loss = loss + cfg.waypoint_weight * heat
            terms["waypoint_loss"] = heat.item()
        return loss, terms

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
    takes and returns the dataset's units; `overrides` set config fields (e.g. few_step=true), those given as
    None keep the checkpoint's own (the registry's `num_inference_steps: ${eval.flow_steps}`, null by default)."""
    path = Path(path)
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"no policy at {path} (expected model.safetensors and config.json from save_pretrained)"
        )
    config = VipraConfig.from_pretrained(path)
    for key, value in ((k, v) for k, v in overrides.items() if v is not None):
        if not hasattr(config, key):
            raise ValueError(f"VipraConfig has no field {key!r}")
        setattr(config, key, value)
    return ProcessedPolicy.from_pretrained(path, device=device, config=config)
