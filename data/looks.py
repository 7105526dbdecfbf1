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

    python -m data.looks outputs/datasets/demos --out looks.png [--pattern 0.67 --gradient 0.3]   # examples
"""

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf


@dataclass
class LookDraw:
    """One step's random looks: which samples change (B,), each part's new colour (B, K, 3), the light's gain
    per channel (B, 3); with patterns, each part's checker (B, K, H, W) multiplying its colour, and with
    gradients, the light's slope across the image (B, 2)."""

    apply: torch.Tensor
    colours: torch.Tensor
    light: torch.Tensor
    patterns: torch.Tensor | None = None
    slopes: torch.Tensor | None = None

    def __getitem__(self, idx) -> "LookDraw":
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return LookDraw(
            *(pick(t) for t in (self.apply, self.colours, self.light, self.patterns, self.slopes))
        )


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
    pattern: float = 0.0  # share of the recoloured parts that get a checker (random cell and contrast)
    gradient: float = 0.0  # the light's brightness slope across the image, up to +- this per half-width

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
            float(cfg.get("pattern", 0.0)),
            float(cfg.get("gradient", 0.0)),
        )

    def draw(self, n: int, gen: torch.Generator) -> LookDraw:
        lo, hi = self.colour
        colours = lo + (hi - lo) * torch.rand(n, len(self.part_colours), 3, generator=gen)
        lo, hi = self.light
        brightness = lo + (hi - lo) * torch.rand(n, 1, generator=gen)
        tint = 1 + self.tint * (2 * torch.rand(n, 3, generator=gen) - 1)
        apply = torch.rand(n, generator=gen) < self.prob
        # (drawn only when on, so a run without them draws what it always drew)
        patterns = self.checkers(n, gen) if self.pattern > 0 else None
        slopes = self.gradient * (2 * torch.rand(n, 2, generator=gen) - 1) if self.gradient > 0 else None
        return LookDraw(apply, colours, brightness * tint, patterns, slopes)

    def checkers(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """(n, K, H, W): per sample and part, 1 or a checker of 3-8 pixel cells whose dark cells are 0.6-0.9
        (the variant tables' checker and grid textures, seen flat)."""
        K, (H, W) = len(self.part_colours), self.parts.shape
        on = (torch.rand(n, K, generator=gen) < self.pattern) & self.recolour
        cell = torch.randint(3, 9, (n, K, 1, 1), generator=gen)
        phase = torch.randint(0, 8, (2, n, K, 1, 1), generator=gen)
        dark = 0.6 + 0.3 * torch.rand(n, K, 1, 1, generator=gen)
        ys, xs = torch.arange(H)[:, None], torch.arange(W)[None]
        odd = ((ys + phase[0]) // cell + (xs + phase[1]) // cell) % 2 == 1  # (n, K, H, W)
        return torch.where(odd & on[..., None, None], dark, torch.ones(()))

    def __call__(self, frames: torch.Tensor, draw: LookDraw) -> torch.Tensor:
        """frames (B, T, 3, H, W) in [0, 1] -> the same with sample b's look changed where draw.apply[b]."""
        background = (frames - self.median).abs().amax(2, keepdim=True) < self.threshold  # (B, T, 1, H, W)
        part_gain = draw.colours / self.part_colours.clamp_min(1e-3)  # (B, K, 3)
        part_gain = torch.where(self.recolour[:, None], part_gain, torch.ones_like(part_gain))
        pixel_gain = part_gain[:, self.parts].permute(0, 3, 1, 2)  # (B, 3, H, W)
        if draw.patterns is not None:  # each pixel takes its own part's checker
            parts = self.parts.expand(len(frames), 1, *self.parts.shape)
            pixel_gain = pixel_gain * draw.patterns.gather(1, parts)
        recoloured = torch.where(background, frames * pixel_gain[:, None], frames)
        light = draw.light[:, :, None, None]  # (B, 3, 1, 1)
        if draw.slopes is not None:
            H, W = self.parts.shape
            ys, xs = torch.linspace(-1, 1, H)[:, None], torch.linspace(-1, 1, W)[None]
            light = (
                light * (1 + draw.slopes[:, 0, None, None] * xs + draw.slopes[:, 1, None, None] * ys)[:, None]
            )
        lit = (recoloured * light[:, None]).clamp(0, 1)
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


def example_grid(frames: torch.Tensor, looks: "LookAugment", count: int, seed: int) -> torch.Tensor:
    """(3, 2H, (count + 1) W) in [0, 1]: the median frame and `count` demo frames above, their new looks below
    (every one changed), the parts' map under the median."""
    gen = torch.Generator().manual_seed(seed)
    picked = frames[torch.randperm(len(frames), generator=gen)[:count]].float()[:, None] / 255
    changed = looks(picked, looks.draw(count, gen))[:, 0]  # (count, 3, H, W)
    parts = (looks.parts.float() / max(len(looks.part_colours) - 1, 1)).expand(3, -1, -1)
    top = torch.cat([looks.median, *picked[:, 0]], dim=2)
    return torch.cat([top, torch.cat([parts, *changed], dim=2)], dim=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Demo frames in new looks (train.policy.looks), as a PNG grid."
    )
    parser.add_argument("dataset", help="a demos LeRobotDataset folder")
    parser.add_argument("--out", required=True)
    parser.add_argument("--image-key", default="observation.images.image")
    parser.add_argument("--pattern", type=float, default=0.0)
    parser.add_argument("--gradient", type=float, default=0.0)
    parser.add_argument("--count", type=int, default=7)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    import PIL.Image

    from data.chunks import EpisodeBank

    config = OmegaConf.load(Path(__file__).parents[1] / "conf/train/policy/cpu.yaml").looks
    config.prob, config.pattern, config.gradient = 1.0, args.pattern, args.gradient
    frames = EpisodeBank.load(args.dataset, args.image_key, []).frames
    grid = example_grid(frames, LookAugment.fit(frames, config), args.count, args.seed)
    image = (grid.permute(1, 2, 0) * 255).round().byte().numpy()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.png")
    PIL.Image.fromarray(image).resize((image.shape[1] * 3, image.shape[0] * 3), PIL.Image.NEAREST).save(tmp)
    tmp.replace(out)
    print(f"looks: {out}")


if __name__ == "__main__":
    main()
