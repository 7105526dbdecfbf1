"""Latent action model: an inverse-dynamics encoder names each frame transition of a clip with a few
discrete tokens, and a forward-dynamics decoder rebuilds the next frame from a frame and those tokens.
Trained on video alone (python -m world_model.lam.train).

    frames (B, T, 3, H, W) in [0, 1]
      └─ IDM: patchify each frame with its difference from the previous one; space-time blocks
         (attention within a frame, causal attention across frames); a linear readout of frame j's
         patches -> quantizer -> latents (B, T-1, N, D), codes (B, T-1, N): one action per transition
    FDM: frame j-1 + latents of step j -> frame j, as frame j-1 warped by a predicted flow plus a
         predicted residual; steps are independent, so only the latents say where things move.
         Training predicts every step from the real frame before it; `decode` rolls out from one frame.

    target=embedding (LAOM): the latents are trained instead to predict frame j's embedding by an EMA target
         encoder from frame j-1's; the pixel decoder then reads detached latents, for the benchmark only.

Frame t+k rolled out from frame t and the latents alone must beat copying frame t (psnr_pred vs
psnr_copy_last in the benchmark).
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from world_model.lam.quantize import FSQ, NSVQ, Continuous, Quantized, VectorQuantizer
from world_model.layers import SpaceTimeBlock, patchify, unpatchify, warp
from world_model.training.checkpoint import load_trained


@dataclass
class LAMConfig:
    image_size: int = 64
    patch_size: int = 8  # 64x64 -> 64 patch tokens per frame
    clip_len: int = 8  # frames per clip: T - 1 transitions, one latent action each
    frame_stride: int = 1  # frames between a clip's frames: one latent action spans this many steps
    dim: int = 96
    heads: int = 4
    mlp_ratio: float = 4.0
    idm_layers: int = 3
    fdm_layers: int = 3
    tokens_per_step: int = 4  # N latent tokens per transition (LAPA 4, ViPRA 16)
    code_dim: int = 16
    quantizer: str = "nsvq"  # nsvq | vq | fsq | none (continuous latents, no codes)
    num_codes: int = 8  # codebook size for nsvq / vq
    fsq_levels: list[int] = field(default_factory=lambda: [2, 2, 2])  # fsq: code_dim = len(levels)
    max_flow: float = 24.0  # pixels: bound on the decoder's sampling offsets (tanh)
    # How the inverse dynamics reads a transition's latents off frame j's patch tokens: `position`, a
    # position-aware linear map of all patches; `pooled`, attention pooling over the patches, biased to
    # where the frame changed, with the same value map everywhere (motion reads alike wherever it is).
    readout: str = "position"
    readout_dim: int = 8  # position: numbers kept per patch before the position-aware linear map
    # The forward dynamics: `tokens`, a transformer over the frame's patches and the latent tokens that
    # outputs flow and residual; `linear_flow`, a transformer over the frame alone that outputs, per pixel, a
    # flow for each latent dimension, the step's flow being their sum weighted by the latents (a
    # linearized dynamics: the frame says what can move and how, the latents how much).
    decoder: str = "tokens"
    # What trains the inverse dynamics: `pixels`, the decoder's rebuilt next frame; `embedding` (LAOM), a
    # predictor's guess of the next frame's embedding by a slowly moving (EMA) copy of a frame encoder. The
    # pixel decoder then trains on detached latents, for the benchmark's pictures and PSNR only.
    target: str = "pixels"
    target_ema: float = 0.99  # embedding: the target encoder's decay per step (1.0: a fixed random encoder)

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")
        if self.frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {self.frame_stride}")
        if self.quantizer not in ("nsvq", "vq", "fsq", "none"):
            raise ValueError(f"quantizer must be nsvq, vq, fsq or none, got {self.quantizer!r}")
        if self.quantizer == "fsq":
            self.code_dim = len(self.fsq_levels)
        if self.readout not in ("position", "pooled"):
            raise ValueError(f"readout must be position or pooled, got {self.readout!r}")
        if self.readout_dim < 1:
            raise ValueError(f"readout_dim must be >= 1, got {self.readout_dim}")
        if self.decoder not in ("tokens", "linear_flow"):
            raise ValueError(f"decoder must be tokens or linear_flow, got {self.decoder!r}")
        if self.target not in ("pixels", "embedding"):
            raise ValueError(f"target must be pixels or embedding, got {self.target!r}")
        if not 0.0 <= self.target_ema <= 1.0:
            raise ValueError(f"target_ema must be in [0, 1], got {self.target_ema}")

    @property
    def continuous(self) -> bool:
        """Latents pass unquantized (quantizer none): the model has no codes."""
        return self.quantizer == "none"

    @property
    def patches_per_frame(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


def make_quantizer(cfg: LAMConfig) -> nn.Module:
    if cfg.quantizer == "none":
        return Continuous()
    if cfg.quantizer == "fsq":
        return FSQ(tuple(cfg.fsq_levels))
    cls = NSVQ if cfg.quantizer == "nsvq" else VectorQuantizer
    return cls(cfg.num_codes, cfg.code_dim, data_init=True)


class InverseDynamics(nn.Module):
    """Clip -> one continuous latent action (N tokens of code_dim) per transition, before quantization.

    Each frame enters with its difference from the previous one, so motion is in the input rather than
    something attention must discover. The latent of transition j-1 -> j is read from all of frame j's
    patch tokens (which have attended to the frames before) by a position-aware linear readout: motion
    anywhere in the image moves the latents from the first step, so the decoder has a signal to use.
    (A learned query token that must first learn where to attend stayed uninformative through a
    20-minute CPU run.) The position-aware map sends the same motion at two places to two directions of
    the latent space; `readout=pooled` instead averages one value map over the patches, weighted by a
    learned score plus the log of how much each patch changed, so the latents start from where the motion
    is and read it alike everywhere. Measured, it lets the decoder use the latents sooner but gives a
    lower linear translation probe (reports/experiment/diagnosis/latent_actions.md, section 8).
    """

    def __init__(self, cfg: LAMConfig):
        super().__init__()
        self.cfg = cfg
        P, C = cfg.patches_per_frame, cfg.dim
        self.patch_embed = nn.Linear(6 * cfg.patch_size**2, C)
        self.pos = nn.Parameter(torch.randn(1, 1, P, C) * 0.02)
        self.time = nn.Parameter(torch.randn(1, cfg.clip_len, 1, C) * 0.02)
        self.blocks = nn.ModuleList(
            SpaceTimeBlock(C, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.idm_layers)
        )
        self.norm = nn.LayerNorm(C)
        N, D = cfg.tokens_per_step, cfg.code_dim
        if cfg.readout == "pooled":
            self.pool_score = nn.Linear(C, N)  # one pooling per latent token
            self.pool_value = nn.Linear(C, N * D)
        else:
            R = cfg.readout_dim
            self.squeeze = nn.Linear(C, R)  # per patch, before the position-aware readout
            self.readout = nn.Linear(P * R, N * D)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        B, T = frames.shape[:2]
        diff = torch.cat([torch.zeros_like(frames[:, :1]), frames[:, 1:] - frames[:, :-1]], dim=1)
        x = torch.cat([frames * 2 - 1, 4 * diff], dim=2)  # (B, T, 6, H, W); differences are small
        x = self.patch_embed(patchify(x, self.cfg.patch_size)) + self.pos + self.time[:, :T]  # (B, T, P, C)
        for block in self.blocks:
            x = block(x)
        # Frame j's tokens have seen frames 0..j: they name the transition j-1 -> j.
        tokens = self.norm(x[:, 1:])  # (B, T-1, P, C)
        N, D = self.cfg.tokens_per_step, self.cfg.code_dim
        if self.cfg.readout == "pooled":
            change = patchify(diff[:, 1:].abs(), self.cfg.patch_size).mean(-1)  # (B, T-1, P)
            scores = self.pool_score(tokens) + torch.log(change + 1e-3)[..., None]  # (B, T-1, P, N)
            values = self.pool_value(tokens).unflatten(-1, (N, D))  # (B, T-1, P, N, D)
            return torch.einsum("btpn,btpnd->btnd", scores.softmax(dim=2), values)  # (B, T-1, N, D)
        z = self.readout(self.squeeze(tokens).flatten(2))  # (B, T-1, N * D)
        return z.unflatten(-1, (N, D))  # (B, T-1, N, D)


class ForwardDynamics(nn.Module):
    """One step: a frame + the latent action of the next transition -> the next frame.

    The prediction is the frame warped by a predicted flow plus a predicted residual: moving things are
    moved rather than redrawn, which a small decoder learns far sooner than synthesis, and the flow can
    be supervised with optical flow of the real frames. Steps are independent (no attention across
    time), so the decoder cannot guess the motion from earlier frames: only the latents say where to go.
    """

    def __init__(self, cfg: LAMConfig):
        super().__init__()
        self.cfg = cfg
        P, N, C = cfg.patches_per_frame, cfg.tokens_per_step, cfg.dim
        self.patch_embed = nn.Linear(3 * cfg.patch_size**2, C)
        self.latent_embed = nn.Linear(cfg.code_dim, C)
        self.pos = nn.Parameter(torch.randn(1, 1, P + N, C) * 0.02)
        self.blocks = nn.ModuleList(
            SpaceTimeBlock(C, cfg.heads, cfg.mlp_ratio, temporal=False) for _ in range(cfg.fdm_layers)
        )
        self.norm = nn.LayerNorm(C)
        self.to_pixels = nn.Linear(C, 5 * cfg.patch_size**2)  # residual RGB + sampling offset (dx, dy)
        nn.init.zeros_(self.to_pixels.weight)  # start as "copy the frame"
        nn.init.zeros_(self.to_pixels.bias)

    def forward(self, frames: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B, S, 3, H, W), latents (B, S, N, code_dim) -> next frames (B, S, 3, H, W) and backward
        flows (B, S, 2, H, W): where, in the given frame, each pixel of the next one comes from."""
        B, S = latents.shape[:2]
        p, P, size = self.cfg.patch_size, self.cfg.patches_per_frame, self.cfg.image_size
        x = self.patch_embed(patchify(frames * 2 - 1, p))  # (B, S, P, C)
        x = torch.cat([x, self.latent_embed(latents)], dim=2) + self.pos
        for block in self.blocks:
            x = block(x)
        out = unpatchify(self.to_pixels(self.norm(x[:, :, :P])), p, size, channels=5)  # (B, S, 5, H, W)
        residual, flow = out[:, :, :3], self.cfg.max_flow * torch.tanh(out[:, :, 3:] / self.cfg.max_flow)
        warped = warp(frames.flatten(0, 1), flow.flatten(0, 1)).view(B, S, 3, size, size)
        return warped + residual, flow


class LinearFlowDynamics(nn.Module):
    """One step, as ForwardDynamics, but linear in the latents: the frame alone gives, per pixel, one flow
    per latent dimension (K = N * code_dim of them) and a residual; the step's flow is the latents'
    weighted sum of those flows. The image motion of a small displacement is linear in it at every pixel,
    so latents that make such a decoder right could be a linear function of the action, which a linear
    probe reads. Measured, its latents stayed unused through 1,000 CPU steps (0.01 dB over another
    episode's; latent_actions.md section 8).
    """

    def __init__(self, cfg: LAMConfig):
        super().__init__()
        self.cfg = cfg
        self.latent_size = cfg.tokens_per_step * cfg.code_dim  # K
        P, C = cfg.patches_per_frame, cfg.dim
        self.patch_embed = nn.Linear(3 * cfg.patch_size**2, C)
        self.pos = nn.Parameter(torch.randn(1, 1, P, C) * 0.02)
        self.blocks = nn.ModuleList(
            SpaceTimeBlock(C, cfg.heads, cfg.mlp_ratio, temporal=False) for _ in range(cfg.fdm_layers)
        )
        self.norm = nn.LayerNorm(C)
        self.to_pixels = nn.Linear(C, (3 + 2 * self.latent_size) * cfg.patch_size**2)
        # Residual at zero (start as a warp); flows small and random, so the latents get a gradient.
        nn.init.normal_(self.to_pixels.weight, std=0.02)
        nn.init.zeros_(self.to_pixels.bias)
        with torch.no_grad():
            self.to_pixels.weight.view(-1, cfg.patch_size**2, C)[:3].zero_()  # channels first: residual

    def forward(self, frames: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B, S, 3, H, W), latents (B, S, N, code_dim) -> next frames and backward flows (B, S, 2, H, W)."""
        B, S = latents.shape[:2]
        p, size, K = self.cfg.patch_size, self.cfg.image_size, self.latent_size
        x = self.patch_embed(patchify(frames * 2 - 1, p)) + self.pos  # (B, S, P, C)
        for block in self.blocks:
            x = block(x)
        out = unpatchify(self.to_pixels(self.norm(x)), p, size, channels=3 + 2 * K)  # (B, S, 3 + 2K, H, W)
        residual, basis = out[:, :, :3], out[:, :, 3:].unflatten(2, (K, 2))  # basis (B, S, K, 2, H, W)
        flow = torch.einsum("bskchw,bsk->bschw", basis, latents.flatten(2))  # (B, S, 2, H, W)
        flow = self.cfg.max_flow * torch.tanh(flow / self.cfg.max_flow)
        warped = warp(frames.flatten(0, 1), flow.flatten(0, 1)).view(B, S, 3, size, size)
        return warped + residual, flow


class FrameEncoder(nn.Module):
    """One frame -> its patch embeddings (B, S, P, dim): a patch embedding and spatial attention blocks."""

    def __init__(self, cfg: LAMConfig, layers: int = 2):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.patch_embed = nn.Linear(3 * cfg.patch_size**2, cfg.dim)
        self.pos = nn.Parameter(torch.randn(1, 1, cfg.patches_per_frame, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(
            SpaceTimeBlock(cfg.dim, cfg.heads, cfg.mlp_ratio, temporal=False) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(patchify(frames * 2 - 1, self.patch_size)) + self.pos  # (B, S, P, C)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class EmbeddingDynamics(nn.Module):
    """LAOM's forward target (Nikulin et al. 2025): from frame j-1's embedding and the latents of step j,
    predict frame j's embedding by a target encoder, an EMA of the online one (as BYOL's), layer-normalized
    and without gradient. The latents must say what changed in a learned feature space rather than how
    each pixel moved; the EMA and the predictor keep the encoder from collapsing to a constant. Measured on
    this suite (no distractors, where LAOM's gain came from) its translation probe is the pixel target's
    (ridge 0.32 vs 0.31; latent_actions.md section 9)."""

    def __init__(self, cfg: LAMConfig):
        super().__init__()
        self.cfg = cfg
        P, N, C = cfg.patches_per_frame, cfg.tokens_per_step, cfg.dim
        self.encoder, self.target_encoder = FrameEncoder(cfg), FrameEncoder(cfg)
        self.target_encoder.load_state_dict(self.encoder.state_dict())
        self.target_encoder.requires_grad_(False)
        self.latent_embed = nn.Linear(cfg.code_dim, C)
        self.pos = nn.Parameter(torch.randn(1, 1, P + N, C) * 0.02)
        self.blocks = nn.ModuleList(
            SpaceTimeBlock(C, cfg.heads, cfg.mlp_ratio, temporal=False) for _ in range(cfg.fdm_layers)
        )
        self.norm, self.head = nn.LayerNorm(C), nn.Linear(C, C)

    def forward(self, frames: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """frames (B, S, 3, H, W), latents (B, S, N, code_dim) -> the next frames' embeddings (B, S, P, C)."""
        P = self.cfg.patches_per_frame
        x = torch.cat([self.encoder(frames), self.latent_embed(latents)], dim=2) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, :, :P]))

    @torch.no_grad()
    def targets(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, S, 3, H, W) -> their target embeddings (B, S, P, C), each token layer-normalized."""
        target = self.target_encoder(frames)
        return nn.functional.layer_norm(target, target.shape[-1:])

    @torch.no_grad()
    def update_target(self) -> None:
        """After each optimizer step: target <- ema * target + (1 - ema) * online."""
        for target, online in zip(self.target_encoder.parameters(), self.encoder.parameters(), strict=True):
            target.lerp_(online, 1.0 - self.cfg.target_ema)


@dataclass
class LAMOutput:
    predicted: (
        torch.Tensor
    )  # (B, T-1, 3, H, W) frames 1..T-1, each from the real frame before and its latents
    flow: torch.Tensor  # (B, T-1, 2, H, W) the decoder's backward flow from each frame to the one before
    latents: torch.Tensor  # (B, T-1, N, code_dim) quantized latent actions (as they are when continuous)
    codes: torch.Tensor | None  # (B, T-1, N) code indices; None for continuous latents
    quantizer_loss: torch.Tensor  # scalar
    embedding_loss: torch.Tensor | None = (
        None  # scalar: target embedding only, the next frames' embedding error
    )


class LatentActionModel(nn.Module):
    def __init__(self, cfg: LAMConfig):
        super().__init__()
        self.cfg = cfg
        self.idm = InverseDynamics(cfg)
        self.quantizer = make_quantizer(cfg)
        self.fdm = LinearFlowDynamics(cfg) if cfg.decoder == "linear_flow" else ForwardDynamics(cfg)
        self.embedding_fdm = EmbeddingDynamics(cfg) if cfg.target == "embedding" else None

    def check_frames(self, frames: torch.Tensor) -> None:
        cfg = self.cfg
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be (B, T, 3, H, W) RGB, got shape {tuple(frames.shape)}")
        if frames.shape[-2:] != (cfg.image_size, cfg.image_size):
            raise ValueError(
                f"frames are {frames.shape[-2]}x{frames.shape[-1]}, this model takes "
                f"{cfg.image_size}x{cfg.image_size} (resize the data or train a model at that size)"
            )
        if not 2 <= frames.shape[1] <= cfg.clip_len:
            raise ValueError(f"clips must have 2..{cfg.clip_len} frames, got {frames.shape[1]}")

    def encode(self, frames: torch.Tensor) -> Quantized:
        """(B, T, 3, H, W) -> quantized latent actions of the T-1 transitions (unquantized if continuous)."""
        self.check_frames(frames)
        return self.quantizer(self.idm(frames))

    def decode(self, first: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Roll the decoder out from one frame: first (B, 3, H, W), latents (B, S, N, code_dim) ->
        frames (B, S, 3, H, W), each predicted from the previous prediction."""
        frame, frames = first, []
        for s in range(latents.shape[1]):
            frame = self.fdm(frame[:, None], latents[:, s : s + 1])[0][:, 0].clamp(0, 1)
            frames.append(frame)
        return torch.stack(frames, dim=1)

    def latents_from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., N) code indices -> (..., N, code_dim) quantized latents (for labels read back from disk)."""
        if self.cfg.continuous:
            raise ValueError("this latent action model is continuous (quantizer none): it has no codes")
        if isinstance(self.quantizer, FSQ):
            return self.quantizer.codes_to_latents(codes)
        return self.quantizer.codebook[codes]

    def forward(self, frames: torch.Tensor) -> LAMOutput:
        q = self.encode(frames)
        if self.embedding_fdm is None:
            predicted, flow = self.fdm(frames[:, :-1], q.z_q)  # each step from the real frame before it
            return LAMOutput(predicted, flow, q.z_q, q.codes, q.loss)
        # The embedding target alone shapes the latents; the pixel decoder only learns to read them.
        predicted, flow = self.fdm(frames[:, :-1], q.z_q.detach())
        error = self.embedding_fdm(frames[:, :-1], q.z_q) - self.embedding_fdm.targets(frames[:, 1:])
        return LAMOutput(predicted, flow, q.z_q, q.codes, q.loss, error.pow(2).mean())


def load_lam(path: str | Path) -> LatentActionModel:
    """A trained latent action model from a run folder or its checkpoint folder, in eval mode."""
    modules, _ = load_trained(
        path, "latent-action", lambda config: {"model": LatentActionModel(LAMConfig(**config))}
    )
    return modules["model"]
