"""Network pieces shared by the models: attention, the space-time transformer block, patches, a
backward warp by optical flow and spatial-softmax keypoints. The latent action model, the backbone,
the neural simulator and the policy's decoder build on them."""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


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
    """Attention within each frame, then causal attention across frames at each token position (unless
    `temporal` is off), then an MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, temporal: bool = True):
        super().__init__()
        self.temporal = temporal
        self.norm_space, self.space = nn.LayerNorm(dim), Attention(dim, heads)
        if temporal:
            self.norm_time, self.time = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, L, C = x.shape
        x = x + self.space(self.norm_space(x).reshape(B * T, L, C)).view(B, T, L, C)
        if self.temporal:
            xt = self.norm_time(x).transpose(1, 2).reshape(B * L, T, C)
            x = x + self.time(xt, causal=True).view(B, L, T, C).transpose(1, 2)
        return x + self.mlp(self.norm_mlp(x))


class SpatialSoftmax(nn.Module):
    """(B, C, h, w) feature maps -> (B, 2C): the expected x (first C) and y (last C) in [-1, 1] of each
    channel's softmax over positions (Levine et al. 2016's keypoints, as robomimic uses them)."""

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        B, C, h, w = maps.shape
        ys, xs = torch.meshgrid(
            torch.linspace(-1, 1, h, device=maps.device, dtype=maps.dtype),
            torch.linspace(-1, 1, w, device=maps.device, dtype=maps.dtype),
            indexing="ij",
        )
        weights = maps.flatten(2).softmax(-1)  # (B, C, h*w)
        return torch.cat([weights @ xs.flatten(), weights @ ys.flatten()], dim=1)


def patchify(frames: torch.Tensor, p: int) -> torch.Tensor:
    """(B, T, C, H, W) -> (B, T, H/p * W/p, C*p*p), patches in row-major order"""
    return rearrange(frames, "b t c (h p) (w q) -> b t (h w) (c p q)", p=p, q=p)


def unpatchify(x: torch.Tensor, p: int, size: int, channels: int = 3) -> torch.Tensor:
    """(B, T, L, C*p*p) -> (B, T, C, size, size)"""
    return rearrange(x, "b t (h w) (c p q) -> b t c (h p) (w q)", h=size // p, c=channels, p=p, q=p)


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp: out(x) = image(x + flow(x)), bilinear, borders repeated. (M, C, H, W), (M, 2, H, W)."""
    M, _, H, W = image.shape
    ys, xs = torch.meshgrid(
        torch.arange(H, dtype=image.dtype, device=image.device),
        torch.arange(W, dtype=image.dtype, device=image.device),
        indexing="ij",
    )
    gx = (xs + flow[:, 0]) * (2 / (W - 1)) - 1
    gy = (ys + flow[:, 1]) * (2 / (H - 1)) - 1
    grid = torch.stack([gx, gy], dim=-1)  # (M, H, W, 2)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
