"""Network pieces shared by the models: attention, the space-time transformer block, patches, a
backward warp by optical flow, spatial-softmax keypoints and conditioned heatmaps trained by
cross-entropy. The latent action model, the backbone, the neural simulator and the policy build on them."""

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


def unit_centres(n: int, device=None, dtype=None) -> torch.Tensor:
    """(n,) centres of n equal cells spanning [-1, 1]: the image coordinates of a map's columns (or rows)."""
    return (2 * torch.arange(n, device=device, dtype=dtype) + 1) / n - 1


def soft_argmax(logits: torch.Tensor) -> torch.Tensor:
    """(B, M, g, g) logits -> (B, M, 2): each map's expected x, y in [-1, 1] under its softmax."""
    B, M, g, _ = logits.shape
    weights = logits.flatten(2).softmax(-1).view(B, M, g, g)
    centres = unit_centres(g, logits.device, logits.dtype)
    return torch.stack([(weights.sum(2) * centres).sum(-1), (weights.sum(3) * centres).sum(-1)], dim=-1)


def heatmap_targets(points: torch.Tensor, size: int, sigma: float = 1.0) -> torch.Tensor:
    """(..., 2) x, y in [-1, 1] -> (..., size * size): a Gaussian of `sigma` cells around each point,
    normalized, on a size x size map (cross-entropy targets at sub-cell precision)."""
    cell = 2 / size
    centres = unit_centres(size, points.device, points.dtype)
    dx = (centres - points[..., :1]) / cell  # (..., g): along the width
    dy = (centres - points[..., 1:]) / cell
    blob = torch.exp(-(dy[..., :, None] ** 2 + dx[..., None, :] ** 2) / (2 * sigma**2)).flatten(-2)
    return blob / blob.sum(-1, keepdim=True)


def heatmap_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of maps (N, g, g) against distributions over their cells (N, g * g)."""
    return -(target * logits.flatten(1).log_softmax(-1)).sum(-1).mean()


class FiLMHeatmaps(nn.Module):
    """(B, c, g, g) features and a condition (B, C) -> (B, M, g, g) logits: the features modulated by the
    condition (FiLM: it starts as the identity), a 3x3 convolution, GELU, a 1x1 to M maps. Trained by
    cross-entropy against where something is, a detector that generalizes from few scenes where a
    regression of positions memorizes them (reports/experiment/diagnosis/waypoints.md)."""

    def __init__(self, channels: int, cond_dim: int, maps: int):
        super().__init__()
        self.film = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.head = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.GELU(), nn.Conv2d(channels, maps, 1)
        )

    def forward(self, fmap: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(cond)[..., None, None].chunk(2, dim=1)
        return self.head(fmap * (1 + gamma) + beta)


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
