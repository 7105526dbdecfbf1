"""Evaluation statistics: Wilson intervals for success rates, and SIMPLER's sim-vs-real agreement metrics."""

import math
from collections.abc import Sequence

import numpy as np


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default); (0, 1) when n == 0."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _paired(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(
            f"need two 1-D sequences of equal length >= 2 (one value per policy), got {a.shape} and {b.shape}"
        )
    return a, b


def mmrv(reference: Sequence[float], evaluator: Sequence[float]) -> float:
    """Mean Maximum Rank Violation (SIMPLER): how badly `evaluator` ranks the policies against `reference`.

    For each policy i, the largest |reference_i - reference_j| over the policies j that the evaluator
    orders the other way round from the reference; averaged over i. 0 means a perfect ranking.
    """
    ref, ev = _paired(reference, evaluator)
    worst = np.zeros(len(ref))
    for i in range(len(ref)):
        for j in range(len(ref)):
            if (ref[i] < ref[j]) != (ev[i] < ev[j]):
                worst[i] = max(worst[i], abs(ref[i] - ref[j]))
    return float(worst.mean())


def pearson_r(reference: Sequence[float], evaluator: Sequence[float]) -> float:
    """Pearson correlation between two evaluators' scores of the same policies (nan if one is constant)."""
    ref, ev = _paired(reference, evaluator)
    ref, ev = ref - ref.mean(), ev - ev.mean()
    denom = math.sqrt(float((ref**2).sum() * (ev**2).sum()))
    return float((ref * ev).sum() / denom) if denom > 0 else float("nan")
