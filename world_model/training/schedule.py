"""The learning-rate schedule of every trainer: linear warm-up, then a cosine down to a floor."""

import math


def warmup_cosine(step: int, steps: int, warmup: int, floor: float) -> float:
    """The factor (of the base rate) at `step` of `steps`: (step + 1) / warmup over the first `warmup`
    steps, then a half cosine from 1 to `floor` over the rest (held at the floor past the end)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return floor + 0.5 * (1 - floor) * (1 + math.cos(math.pi * min(1.0, progress)))
