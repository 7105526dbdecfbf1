"""Latent action model: an inverse-dynamics encoder names each frame transition of a clip with a few
discrete tokens, and a forward-dynamics decoder rebuilds every later frame from the first frame and
those tokens. Trained on video alone (python -m world_model.train_lam).

    frames (B, T, 3, H, W) in [0, 1]
      └─ IDM: patchify, + N action tokens per frame, space-time blocks (temporal attention causal)
           └─ action tokens of frames 1..T-1 -> quantizer -> latents (B, T-1, N, D), codes (B, T-1, N)
    FDM: for each target j = 1..T-1, the patches of frame 0 + time j, + the projected latents of step j;
         space-time blocks, causal over j, so target j sees latents 1..j only
           └─ frame 0 + predicted residual -> frames 1..T-1 (B, T-1, 3, H, W)

The FDM never sees a real frame after the first, so the latents are the only way motion reaches it:
copying frame 0 is the baseline the model must beat (psnr_copy_last in the benchmark).
"""

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from world_model.quantize import FSQ, NSVQ, Quantized, VectorQuantizer


@dataclass
class LAMConfig:
    image_size: int = 64
    patch_size: int = 8  # 64x64 -> 64 patch tokens per frame
    clip_len: int = 8  # frames per clip: T - 1 transitions, one latent action each
    dim: int = 96
    heads: int = 4
    mlp_ratio: float = 4.0
    idm_layers: int = 3
    fdm_layers: int = 3
    tokens_per_step: int = 4  # N latent tokens per transition (LAPA 4, ViPRA 16)
    code_dim: int = 16
    quantizer: str = "nsvq"  # nsvq | vq | fsq
    num_codes: int = 8  # codebook size for nsvq / vq
    fsq_levels: list[int] = field(default_factory=lambda: [2, 2, 2])  # fsq: code_dim = len(levels)

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")
        if self.quantizer not in ("nsvq", "vq", "fsq"):
            raise ValueError(f"quantizer must be nsvq, vq or fsq, got {self.quantizer!r}")
        if self.quantizer == "fsq":
            self.code_dim = len(self.fsq_levels)

    @property
    def patches_per_frame(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        B, L, C = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, heads, L, C/heads)
        return self.proj(y.transpose(1, 2).reshape(B, L, C))


class SpaceTimeBlock(nn.Module):
    """Attention within each frame, then causal attention across frames at each token position, then an MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm_space, self.space = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm_time, self.time = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, L, C = x.shape
        x = x + self.space(self.norm_space(x).reshape(B * T, L, C)).view(B, T, L, C)
        xt = self.norm_time(x).transpose(1, 2).reshape(B * L, T, C)
        x = x + self.time(xt, causal=True).view(B, L, T, C).transpose(1, 2)
        return x + self.mlp(self.norm_mlp(x))


def patchify(frames: torch.Tensor, p: int) -> torch.Tensor:
    """(B, T, 3, H, W) -> (B, T, H/p * W/p, 3*p*p)"""
    B, T, C, H, W = frames.shape
    x = frames.reshape(B, T, C, H // p, p, W // p, p).permute(0, 1, 3, 5, 2, 4, 6)
    return x.reshape(B, T, (H // p) * (W // p), C * p * p)


def unpatchify(x: torch.Tensor, p: int, size: int) -> torch.Tensor:
    """(B, T, L, 3*p*p) -> (B, T, 3, size, size)"""
    B, T, L, _ = x.shape
    n = size // p
    x = x.reshape(B, T, n, n, 3, p, p).permute(0, 1, 4, 2, 5, 3, 6)
    return x.reshape(B, T, 3, size, size)


def make_quantizer(cfg: LAMConfig) -> nn.Module:
    if cfg.quantizer == "fsq":
        return FSQ(tuple(cfg.fsq_levels))
    cls = NSVQ if cfg.quantizer == "nsvq" else VectorQuantizer
    return cls(cfg.num_codes, cfg.code_dim)


class InverseDynamics(nn.Module):
    """Clip -> one continuous latent action (N tokens of code_dim) per transition, before quantization."""

    def __init__(self, cfg: LAMConfig):
        super().__init__()
        self.cfg = cfg
        P, N, C = cfg.patches_per_frame, cfg.tokens_per_step, cfg.dim
        self.patch_embed = nn.Linear(3 * cfg.patch_size**2, C)
        self.pos = nn.Parameter(torch.randn(1, 1, P + N, C) * 0.02)  # patches, then action tokens
        self.time = nn.Parameter(torch.randn(1, cfg.clip_len, 1, C) * 0.02)
        self.action_queries = nn.Parameter(torch.randn(1, 1, N, C) * 0.02)
        self.blocks = nn.ModuleList(
            SpaceTimeBlock(C, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.idm_layers)
        )
        self.norm = nn.LayerNorm(C)
        self.to_latent = nn.Linear(C, cfg.code_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        B, T = frames.shape[:2]
        P, N = self.cfg.patches_per_frame, self.cfg.tokens_per_step
        x = self.patch_embed(patchify(frames * 2 - 1, self.cfg.patch_size))  # (B, T, P, C)
        x = torch.cat([x, self.action_queries.expand(B, T, N, -1)], dim=2)  # (B, T, P+N, C)
        x = x + self.pos + self.time[:, :T]
        for block in self.blocks:
            x = block(x)
        # The action tokens of frame j have seen frames 0..j: they name the transition j-1 -> j.
        return self.to_latent(self.norm(x[:, 1:, P:]))  # (B, T-1, N, code_dim)


class ForwardDynamics(nn.Module):
    """First frame + latent actions 1..T-1 -> frames 1..T-1, each from the latents up to its step."""

    def __init__(self, cfg: LAMConfig):
        super().__init__()
        self.cfg = cfg
        P, N, C = cfg.patches_per_frame, cfg.tokens_per_step, cfg.dim
        self.patch_embed = nn.Linear(3 * cfg.patch_size**2, C)
        self.latent_embed = nn.Linear(cfg.code_dim, C)
        self.pos = nn.Parameter(torch.randn(1, 1, P + N, C) * 0.02)
        self.time = nn.Parameter(torch.randn(1, cfg.clip_len - 1, 1, C) * 0.02)
        self.blocks = nn.ModuleList(
            SpaceTimeBlock(C, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.fdm_layers)
        )
        self.norm = nn.LayerNorm(C)
        self.to_pixels = nn.Linear(C, 3 * cfg.patch_size**2)
        nn.init.zeros_(self.to_pixels.weight)  # start as "copy frame 0"
        nn.init.zeros_(self.to_pixels.bias)

    def forward(self, first: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """first (B, 3, H, W), latents (B, S, N, code_dim) -> predicted frames (B, S, 3, H, W)"""
        B, S = latents.shape[:2]
        p, P = self.cfg.patch_size, self.cfg.patches_per_frame
        x = self.patch_embed(patchify(first[:, None] * 2 - 1, p)).expand(B, S, P, -1)  # (B, S, P, C)
        x = torch.cat([x, self.latent_embed(latents)], dim=2) + self.pos + self.time[:, :S]
        for block in self.blocks:
            x = block(x)
        residual = unpatchify(self.to_pixels(self.norm(x[:, :, :P])), p, self.cfg.image_size)
        return first[:, None] + residual


@dataclass
class LAMOutput:
    predicted: torch.Tensor  # (B, T-1, 3, H, W) frames 1..T-1 rebuilt from frame 0 and the latents
    latents: torch.Tensor  # (B, T-1, N, code_dim) quantized latent actions
    codes: torch.Tensor  # (B, T-1, N) code indices
    quantizer_loss: torch.Tensor  # scalar


class LatentActionModel(nn.Module):
    def __init__(self, cfg: LAMConfig):
        super().__init__()
        self.cfg = cfg
        self.idm = InverseDynamics(cfg)
        self.quantizer = make_quantizer(cfg)
        self.fdm = ForwardDynamics(cfg)

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
        """(B, T, 3, H, W) -> quantized latent actions of the T-1 transitions."""
        self.check_frames(frames)
        return self.quantizer(self.idm(frames))

    def decode(self, first: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return self.fdm(first, latents)

    def latents_from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., N) code indices -> (..., N, code_dim) quantized latents (for labels read back from disk)."""
        if isinstance(self.quantizer, FSQ):
            return self.quantizer.codes_to_latents(codes)
        return self.quantizer.codebook[codes]

    def forward(self, frames: torch.Tensor) -> LAMOutput:
        q = self.encode(frames)
        predicted = self.decode(frames[:, 0], q.z_q)
        return LAMOutput(predicted, q.z_q, q.codes, q.loss)
