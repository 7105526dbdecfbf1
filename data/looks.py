"""Photometric augmentation of demo frames toward looks the demos lack: new colours for the scene's background
parts (the table, the backdrop) and a new light, drawn per sample and shared by a sample's frames.

The demos are filmed from one camera in one look, so the median of their frames is the empty scene; a pixel
within `threshold` of it is background (the robot and the objects move, so they differ from it), and the
median frame's colours, clustered, say which background part each pixel belongs to (parts under `min_share`
of the image, such as the robot's dark base, keep their colour). A recoloured part keeps
its shading: its pixels are scaled by new colour / part colour. Nothing here knows the simulator, only the
demo frames; the policy still never sees another look's real pixels.

    looks = LookAugment.fit(bank.frames, cfg)         # once, from the training demos
    draw = looks.draw(batch_size, generator)          # per step, from the run's generator
    frames = looks(frames, draw)                      # (B, T, 3, H, W) in [0, 1]
"""

from dataclasses import dataclass

import torch
from omegaconf import DictConfig


@dataclass
class LookDraw:
    """One step's random looks: which samples change (B,), each part's new colour (B, K, 3) and the light's
    gain per channel (B, 3)."""

    apply: torch.Tensor
    colours: torch.Tensor
    light: torch.Tensor

    def __getitem__(self, idx) -> "LookDraw":
        return LookDraw(self.apply[idx], self.colours[idx], self.light[idx])


@dataclass
class LookAugment:
    median: torch.Tensor  # (3, H, W) in [0, 1]: the empty scene
    parts: torch.Tensor  # (H, W) long: the background part of each pixel
    part_colours: torch.Tensor  # (K, 3): the median frame's colour of each part
    recolour: torch.Tensor  # (K,) bool: parts big enough to be a surface (not the robot's base, a seam)
    prob: float  # share of the samples that change look
    colour: tuple[float, float]  # a part's new colour, per channel, uniform in this range
    light: tuple[float, float]  # the light's brightness gain, uniform in this range
    tint: float  # and its per-channel gain, 1 +- tint
    threshold: float  # max channel difference from the median frame that is still background

    @classmethod
    def fit(cls, frames: torch.Tensor, cfg: DictConfig, samples: int = 2000) -> "LookAugment":
        """From demo frames (F, 3, H, W) uint8 and the config's ranges (train.policy.looks)."""
        if frames.ndim != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(
                f"LookAugment.fit needs (F, 3, H, W) uint8 frames, got {tuple(frames.shape)} {frames.dtype}"
            )
        gen = torch.Generator().manual_seed(0)
        picked = torch.randperm(len(frames), generator=gen)[:samples]
        median = frames[picked].float().median(0).values / 255
        parts, centres = kmeans_colours(median.flatten(1).T, cfg.parts)
        share = parts.bincount(minlength=cfg.parts) / len(parts)
        return cls(
            median,
            parts.view(median.shape[1:]),
            centres,
            share >= cfg.min_share,
            float(cfg.prob),
            tuple(cfg.colour),
            tuple(cfg.light),
            float(cfg.tint),
            float(cfg.threshold),
        )

    def draw(self, n: int, gen: torch.Generator) -> LookDraw:
        lo, hi = self.colour
        colours = lo + (hi - lo) * torch.rand(n, len(self.part_colours), 3, generator=gen)
        lo, hi = self.light
        brightness = lo + (hi - lo) * torch.rand(n, 1, generator=gen)
        tint = 1 + self.tint * (2 * torch.rand(n, 3, generator=gen) - 1)
        return LookDraw(torch.rand(n, generator=gen) < self.prob, colours, brightness * tint)

    def __call__(self, frames: torch.Tensor, draw: LookDraw) -> torch.Tensor:
        """frames (B, T, 3, H, W) in [0, 1] -> the same with sample b's look changed where draw.apply[b]."""
        background = (frames - self.median).abs().amax(2, keepdim=True) < self.threshold  # (B, T, 1, H, W)
        part_gain = draw.colours / self.part_colours.clamp_min(1e-3)  # (B, K, 3)
        part_gain = torch.where(self.recolour[:, None], part_gain, torch.ones_like(part_gain))
        pixel_gain = part_gain[:, self.parts].permute(0, 3, 1, 2)[:, None]  # (B, 1, 3, H, W)
        recoloured = torch.where(background, frames * pixel_gain, frames)
        lit = (recoloured * draw.light[:, None, :, None, None]).clamp(0, 1)
        return torch.where(draw.apply[:, None, None, None, None], lit, frames)


def kmeans_colours(pixels: torch.Tensor, k: int, iters: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """pixels (N, 3) -> (N,) cluster of each and (k, 3) centres; deterministic (seeded at brightness
    quantiles), so a run's parts are the same every time."""
    order = pixels.sum(1).argsort()
    centres = pixels[order[((torch.arange(k) + 0.5) / k * len(pixels)).long()]]
    for _ in range(iters):
        labels = torch.cdist(pixels, centres).argmin(1)
        for j in range(k):
            if (labels == j).any():
                centres[j] = pixels[labels == j].mean(0)
    return labels, centres
