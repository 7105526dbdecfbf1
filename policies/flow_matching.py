"""Flow matching for action chunks: the probability path, the training targets and the sampler, apart
from any network (as facebookresearch/flow_matching splits path / solver / model).

Convention (pi0's): x_t = t * noise + (1 - t) * actions, so t = 1 is noise and t = 0 the data; the
network predicts the velocity u = noise - actions and sampling integrates from t = 1 down to 0.
Training times come from Beta(alpha, 1) (pi0 / ViPRA: alpha = 1.5), which puts more of them near the
noise end, where the velocity is hardest to predict.

Few-step mode, after shortcut models (Frans et al., 2024): the network also takes a step size d.
d = 0 is plain flow matching (the instantaneous velocity, integrated with K small Euler steps); for
d > 0 the target is self-consistency, one step of size d equals two steps of d/2, built from the
network itself with no gradient. Then 1 or 2 steps of d = 1 or 1/2 replace K Euler steps. Step sizes
are indexed: 0 -> d = 0, k >= 1 -> d = 2^-(k-1) (1, 1/2, 1/4, ...). Or the target of a step of size d is
the span the network's own K-step Euler sampler covers from t to t - d (`euler_span_targets`, a distillation
of the sampler the few steps replace rather than a bootstrap through the finer step sizes).

    velocity_fn(x (B, H, A), t (B,), d_index (B,) long) -> (B, H, A)
"""

from collections.abc import Callable

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------- path
def sample_time(n: int, alpha: float = 1.5, gen: torch.Generator | None = None, device=None) -> torch.Tensor:
    """(n,) times from Beta(alpha, 1) by inverting its CDF t^alpha, kept inside [0.001, 1]."""
    u = torch.rand(n, generator=gen).to(device)
    return 0.001 + 0.999 * u ** (1.0 / alpha)


def interpolate(actions: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The point at time t (B,) on the straight path from actions (t = 0) to noise (t = 1)."""
    t = t.view(-1, *([1] * (actions.ndim - 1)))
    return t * noise + (1 - t) * actions


def target_velocity(actions: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """d x_t / dt along the path: constant in t."""
    return noise - actions


def step_size(d_index: torch.Tensor) -> torch.Tensor:
    """Step-size index -> d (0 for index 0, else 2^-(index-1))."""
    d = 2.0 ** -(d_index.float() - 1)
    return torch.where(d_index == 0, torch.zeros_like(d), d)


def steps_to_index(steps: int, shortcut: bool) -> int:
    """The step-size index that `steps` equal steps cover [0, 1] with: d = 1/steps in shortcut mode (steps a
    power of two), else 0 (the instantaneous velocity, any number of steps)."""
    if not shortcut:
        return 0
    if steps < 1 or steps & (steps - 1):
        raise ValueError(
            f"shortcut sampling takes a power-of-two number of steps (1, 2, 4, ...), got {steps}"
        )
    return 1 + steps.bit_length() - 1


# ---------------------------------------------------------------------------------------------- targets
def draw_steps(
    actions: torch.Tensor, noise: torch.Tensor, levels: int, gen: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample a step-size index in 1..levels, a time t with t - d >= 0 (the step stays on [0, 1]) and
    the path's point there: (d_index (B,), t (B,), x_t (B, H, A))."""
    B, device = len(actions), actions.device
    d_index = torch.randint(1, levels + 1, (B,), generator=gen).to(device)
    d = step_size(d_index)
    t = d + (1 - d) * torch.rand(B, generator=gen).to(device)
    return d_index, t, interpolate(actions, noise, t)


@torch.no_grad()
def shortcut_targets(
    velocity_fn: VelocityFn,
    actions: torch.Tensor,
    noise: torch.Tensor,
    levels: int,
    gen: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Self-consistency targets for step sizes d = 1 .. 2^-(levels-1): returns (x_t, t, d_index, target)
    with target = (v(x_t, t, d/2) + v(x_t - d/2 v, t - d/2, d/2)) / 2. The finest level's half step uses
    d = 0, the flow-matching velocity, which anchors the hierarchy."""
    d_index, t, x_t = draw_steps(actions, noise, levels, gen)
    d = step_size(d_index)
    half_index = torch.where(d_index < levels, d_index + 1, torch.zeros_like(d_index))
    half = (d / 2).view(-1, *([1] * (actions.ndim - 1)))
    first = velocity_fn(x_t, t, half_index)
    second = velocity_fn(x_t - half * first, t - d / 2, half_index)
    return x_t, t, d_index, (first + second) / 2


@torch.no_grad()
def euler_span_targets(
    velocity_fn: VelocityFn,
    actions: torch.Tensor,
    noise: torch.Tensor,
    levels: int,
    teacher_steps: int,
    gen: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distilled targets for step sizes d = 1 .. 2^-(levels-1): returns (x_t, t, d_index, target), each
    target the `euler_span` of the flow-matching velocity at teacher_steps steps over [0, 1]."""
    d_index, t, x_t = draw_steps(actions, noise, levels, gen)
    return x_t, t, d_index, euler_span(velocity_fn, x_t, t, step_size(d_index), teacher_steps)


def euler_span(
    velocity_fn: VelocityFn, x_t: torch.Tensor, t: torch.Tensor, d: torch.Tensor, teacher_steps: int
) -> torch.Tensor:
    """(x_t - x_{t-d}) / d (B, H, A), x_{t-d} reached from x_t by round(d * teacher_steps) (at least one) Euler
    steps of the flow-matching velocity (index 0). Then 1/d steps of size d from t = 1 land where
    `euler_sample` with teacher_steps steps does, when d * teacher_steps is a whole number."""
    shape = (-1, *([1] * (x_t.ndim - 1)))
    substeps = torch.clamp(torch.round(d * teacher_steps), min=1)
    h = d / substeps
    flow = torch.zeros(len(x_t), dtype=torch.long, device=x_t.device)
    x = x_t
    for j in range(int(substeps.max())):  # in lockstep: a sample that has covered its span stands still
        active = (j < substeps).float()
        x = x - (active * h).view(shape) * velocity_fn(x, t - j * h, flow)
    return (x_t - x) / d.view(shape)


# ---------------------------------------------------------------------------------------------- solver
@torch.inference_mode()
def euler_sample(velocity_fn: VelocityFn, noise: torch.Tensor, steps: int, d_index: int = 0) -> torch.Tensor:
    """Integrate from noise at t = 1 to t = 0 in `steps` equal Euler steps; returns x_0 (the actions)."""
    if steps < 1:
        raise ValueError(f"need at least one integration step, got {steps}")
    B, device = len(noise), noise.device
    x, dt = noise, 1.0 / steps
    index = torch.full((B,), d_index, dtype=torch.long, device=device)
    for i in range(steps):
        t = torch.full((B,), 1.0 - i * dt, device=device)
        x = x - dt * velocity_fn(x, t, index)
    return x
