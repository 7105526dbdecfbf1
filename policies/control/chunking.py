"""Action chunks on the control clock: resampling from the policy's rate, the plan the loop pops
from, and how a new chunk takes over from the old one.

Time is counted in control ticks. A chunk computed from the observation of tick s covers ticks
s, s+1, ...; when it arrives at tick k, its first k - s actions belong to ticks that already ran on
the old chunk (the inference delay), so they are dropped: that is the delay compensation. The rest
takes over in one of three ways (`mode`):

    none      the new chunk replaces the plan at once (a jump at the boundary)
    blend     real-time-chunking style: the actions already executed stay as they were, and the new
              chunk is blended toward the old plan, w_old = 1 - i / blend_ticks over its first ticks
    ensemble  ACT's temporal ensembling: every chunk covering a tick votes, weight exp(-decay * age
              rank), the oldest first (ACT's convention)
"""

from dataclasses import dataclass

import numpy as np

MODES = ("none", "blend", "ensemble")


def resample_chunk(
    chunk: np.ndarray,
    policy_hz: float,
    control_hz: float,
    delta_dims: np.ndarray,
    previous: np.ndarray | None = None,
    interpolate: bool = False,
) -> np.ndarray:
    """(H, A) actions at policy_hz -> (T, A) at control_hz, T = round(H * control_hz / policy_hz).

    Delta dimensions (boolean mask) are displacements per policy step: each tick gets its share
    (x control period / policy period), so with a whole number of ticks per step (ControlConfig
    requires it) the chunk moves the robot just as far. Absolute ones are
    held through their policy step, or with `interpolate` ramped from the previous value (`previous`,
    else the chunk's first) to reach each target at the end of its step.
    """
    H, A = chunk.shape
    ratio = control_hz / policy_hz
    T = max(1, round(H * ratio))
    tick = np.arange(T)
    index = np.minimum((tick / ratio + 1e-9).astype(int), H - 1)  # the policy step each tick falls in
    out = chunk[index].astype(np.float64)
    out[:, delta_dims] /= ratio
    if interpolate:
        start = chunk[0] if previous is None else np.asarray(previous, dtype=np.float64)
        before = np.concatenate([start[None], chunk[:-1]])[index]
        frac = np.clip((tick + 1) / ratio - index, 0.0, 1.0)[:, None]
        ramp = before + frac * (chunk[index] - before)
        out[:, ~delta_dims] = ramp[:, ~delta_dims]
    return out


@dataclass
class Takeover:
    """What integrating one chunk did, for the log and the statistics."""

    delay_ticks: int  # ticks between the observation and the chunk's arrival
    dropped: int  # actions of the new chunk whose ticks had already run
    usable: int  # actions left after dropping (0: the chunk arrived too late to use)


class ChunkPlan:
    """The actions planned for the coming ticks, rebuilt whenever a chunk arrives.

    `pop(tick)` returns the action for that tick (None when the plan has run out: the watchdog's
    business), and whether it is the first tick served by a new chunk (a chunk boundary).
    """

    def __init__(
        self, action_dim: int, mode: str = "blend", blend_ticks: int = 8, ensemble_decay: float = 0.01
    ):
        if mode not in MODES:
            raise ValueError(f"unknown smoothing mode {mode!r}; expected one of {MODES}")
        if blend_ticks < 1:
            raise ValueError(f"blend_ticks must be >= 1, got {blend_ticks}")
        self.action_dim, self.mode = action_dim, mode
        self.blend_ticks, self.ensemble_decay = blend_ticks, ensemble_decay
        self.chunks: list[tuple[int, np.ndarray]] = []  # (first tick, (T, A)) per chunk, oldest first
        self._boundary_at: int | None = None

    def remaining(self, tick: int) -> int:
        """Ticks from `tick` on that the plan still covers."""
        return max((start + len(a) - tick for start, a in self.chunks), default=0)

    def integrate(self, actions: np.ndarray, obs_tick: int, now: int) -> Takeover:
        """Take over with `actions` (T, A) computed from the observation of tick `obs_tick`, at tick `now`."""
        if actions.ndim != 2 or actions.shape[1] != self.action_dim:
            raise ValueError(f"chunk must be (T, {self.action_dim}), got {actions.shape}")
        if not 0 <= obs_tick <= now:
            raise ValueError(f"observation tick {obs_tick} must be in [0, now={now}]")
        delay = now - obs_tick
        fresh = actions[delay:]
        if len(fresh) == 0:
            return Takeover(delay, len(actions), 0)
        if self.mode == "ensemble":
            self.chunks = [(s, a) for s, a in self.chunks if s + len(a) > now] + [(now, fresh)]
        else:
            if self.mode == "blend":
                fresh = self._blend(fresh, now)
            self.chunks = [(now, fresh)]
        self._boundary_at = now
        return Takeover(delay, delay, len(fresh))

    def _blend(self, fresh: np.ndarray, now: int) -> np.ndarray:
        """The old plan's actions for the coming ticks, handing over to `fresh` linearly."""
        if not self.chunks:
            return fresh
        start, old = self.chunks[-1]
        old = old[now - start :]
        if len(old) == 0:
            return fresh
        if len(old) < self.blend_ticks:  # the old plan ends within the hand-over: it holds its last action
            old = np.concatenate([old, np.repeat(old[-1:], self.blend_ticks - len(old), axis=0)])
        n = min(len(fresh), self.blend_ticks)
        w_old = (1.0 - np.arange(n) / self.blend_ticks)[:, None]
        out = fresh.copy()
        out[:n] = w_old * old[:n] + (1 - w_old) * fresh[:n]
        return out

    def pop(self, tick: int) -> tuple[np.ndarray | None, bool]:
        """The action for `tick` (None if the plan does not cover it) and whether a new chunk starts there."""
        covering = [(s, a) for s, a in self.chunks if s <= tick < s + len(a)]
        boundary = self._boundary_at == tick
        if not covering:
            return None, False
        if len(covering) == 1:
            s, a = covering[0]
            return a[tick - s].copy(), boundary
        weights = np.exp(-self.ensemble_decay * np.arange(len(covering)))  # oldest first, as in ACT
        votes = np.stack([a[tick - s] for s, a in covering])
        return (weights[:, None] * votes).sum(0) / weights.sum(), boundary

    def reset(self) -> None:
        self.chunks, self._boundary_at = [], None


def boundary_jump_ratio(actions, boundary, scale=None) -> float:
    """Largest action change entering a chunk boundary over the largest change inside chunks.

    actions (N, A) as executed and boundary (N,) True at the first tick of each new chunk, or lists of
    such arrays (one per run; no change is counted across runs). Changes are max-abs over dimensions
    after dividing by `scale` (e.g. the action range), so that no unit wins. nan when either set is
    empty or nothing changes inside chunks.
    """
    if not isinstance(actions, list):
        actions, boundary = [actions], [boundary]
    at, inside = [0.0], [0.0]
    for a, b in zip(actions, boundary, strict=True):
        if len(b) < 2:
            continue
        a = np.asarray(a, dtype=np.float64).reshape(len(b), -1)
        if scale is not None:
            a = a / np.asarray(scale, dtype=np.float64)
        jumps = np.abs(np.diff(a, axis=0)).max(axis=1, initial=0.0)  # jumps[i]: tick i -> i + 1
        entering = np.asarray(b, dtype=bool)[1:]
        at += list(jumps[entering])
        inside += list(jumps[~entering])
    if len(at) == 1 or len(inside) == 1 or max(inside) == 0:
        return float("nan")
    return float(max(at) / max(inside))
