"""Safety between the plan and the robot: action bounds, per-tick change limits, the hold action, and
the watchdog that stops the robot when no fresh action has come for too long.

Limits are in the policy's units (a delta dimension per policy step, as the bounds of the action box
are written), whatever the control rate: the filter rescales delta dimensions by the ticks per policy
step before checking. The change limit applies between consecutive ticks, so the same value allows a
faster change at a higher rate.
"""

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SafetyConfig:
    low: list[float] | None = None  # action bounds (policy units); None: no bounds
    high: list[float] | None = None
    max_change: list[float] | float | None = (
        None  # largest change between consecutive ticks (policy units, per tick)
    )
    stop_after_s: float = 1.0  # watchdog: stop when no fresh action has been sent for this long
    delta_dims: list[int] = field(default_factory=list)  # dimensions that are per-step displacements


class SafetyFilter:
    """Clips each action to the bounds and to `max_change` from the previous one; counts what it clipped."""

    def __init__(self, cfg: SafetyConfig, action_dim: int, ticks_per_policy_step: float):
        self.cfg = cfg
        self.delta = np.zeros(action_dim, dtype=bool)
        if any(not 0 <= d < action_dim for d in cfg.delta_dims):
            raise ValueError(f"delta_dims {cfg.delta_dims} out of range for {action_dim} action dimensions")
        self.delta[list(cfg.delta_dims)] = True
        # Executed action = policy-unit action * scale (a delta dimension is shared among its ticks).
        self.scale = np.where(self.delta, 1.0 / ticks_per_policy_step, 1.0)
        self.low = self._vector(cfg.low, "low", action_dim, -np.inf)
        self.high = self._vector(cfg.high, "high", action_dim, np.inf)
        if np.any(self.low > self.high):
            raise ValueError(f"safety bounds have low > high: low {self.low}, high {self.high}")
        self.max_change = self._vector(cfg.max_change, "max_change", action_dim, np.inf)
        self.reset()

    @staticmethod
    def _vector(value, name: str, dim: int, default: float) -> np.ndarray:
        if value is None:
            return np.full(dim, default)
        v = np.asarray(value, dtype=np.float64)
        v = np.full(dim, float(v)) if v.ndim == 0 else v
        if v.shape != (dim,):
            raise ValueError(f"safety.{name} has {v.size} values; the robot's action has {dim} dimensions")
        return v.copy()

    def __call__(self, action: np.ndarray) -> np.ndarray:
        u = action / self.scale  # policy units
        bounded = np.clip(u, self.low, self.high)
        self.clipped_bounds += int(np.any(bounded != u))
        if self.last is not None:
            prev = self.last / self.scale
            limited = np.clip(bounded, prev - self.max_change, prev + self.max_change)
            self.clipped_change += int(np.any(limited != bounded))
            bounded = limited
        self.last = bounded * self.scale
        return self.last.copy()

    def hold(self) -> np.ndarray:
        """The action that keeps the robot where it is: no displacement, absolute dimensions unchanged."""
        if self.last is None:
            raise RuntimeError("no action was sent yet: there is nothing to hold")
        self.last = np.where(self.delta, 0.0, self.last)  # the next action's change is limited from here
        return self.last.copy()

    def reset(self) -> None:
        self.last: np.ndarray | None = None  # the last action sent (executed units)
        self.clipped_bounds = self.clipped_change = 0  # actions clipped to the bounds / change limits


class Watchdog:
    """Times how long the robot has gone without a fresh action; `expired` after `stop_after_s`."""

    def __init__(self, stop_after_s: float):
        if stop_after_s <= 0:
            raise ValueError(f"stop_after_s must be > 0, got {stop_after_s}")
        self.stop_after_s = stop_after_s
        self.last_fresh: float | None = None

    def fresh(self, now: float) -> None:
        self.last_fresh = now

    def starving_for(self, now: float) -> float:
        return 0.0 if self.last_fresh is None else now - self.last_fresh

    def expired(self, now: float) -> bool:
        return self.starving_for(now) > self.stop_after_s
