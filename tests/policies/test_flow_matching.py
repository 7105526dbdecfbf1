"""Flow matching on cases with known answers: point-mass and Gaussian data, whose optimal velocity
fields have closed forms."""

import pytest
import torch

from policies.flow_matching import (
    euler_sample,
    euler_span,
    euler_span_targets,
    interpolate,
    sample_time,
    shortcut_targets,
    step_size,
    steps_to_index,
    target_velocity,
)


def point_mass_field(a0: torch.Tensor):
    """Data = a0 exactly: every path is straight to a0, v*(x, t) = (x - a0) / t, for any step size."""
    return lambda x, t, d: (x - a0) / t.view(-1, 1, 1)


def gaussian_field(mu: float, sigma: float):
    """Data ~ N(mu, sigma^2) per dimension: E[noise - a | x_t] for the jointly Gaussian (x_t, u)."""

    def v(x, t, d):
        t = t.view(-1, 1, 1)
        var_x = t**2 + (1 - t) ** 2 * sigma**2
        cov = t - (1 - t) * sigma**2  # Cov(u, x_t) with u = noise - a
        return -mu + cov / var_x * (x - (1 - t) * mu)

    return v


@pytest.mark.parametrize("steps", [1, 2, 10])
def test_euler_integrates_straight_paths_exactly(steps):
    a0 = torch.tensor([0.3, -1.2, 2.0]).view(1, 1, 3)
    noise = torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(0))
    out = euler_sample(point_mass_field(a0), noise, steps)
    torch.testing.assert_close(out, a0.expand_as(out), atol=1e-5, rtol=0)


def test_sampling_the_optimal_gaussian_field_recovers_the_data_distribution():
    mu, sigma = 1.5, 0.5
    noise = torch.randn(20000, 1, 1, generator=torch.Generator().manual_seed(0))
    out = euler_sample(gaussian_field(mu, sigma), noise, steps=200)
    assert abs(out.mean().item() - mu) < 0.02
    assert abs(out.std().item() - sigma) < 0.02


def test_flow_matching_loss_is_minimal_at_the_optimal_field():
    """E|v*(x_t, t) - u|^2 equals the analytic conditional variance; a perturbed field does worse."""
    mu, sigma, n = 1.5, 0.5, 200000
    gen = torch.Generator().manual_seed(1)
    a = mu + sigma * torch.randn(n, 1, 1, generator=gen)
    noise = torch.randn(n, 1, 1, generator=gen)
    t = torch.full((n,), 0.3)
    x_t, u = interpolate(a, noise, t), target_velocity(a, noise)
    v = gaussian_field(mu, sigma)
    loss = ((v(x_t, t, None) - u) ** 2).mean().item()
    tt = 0.3
    var_u, var_x, cov = 1 + sigma**2, tt**2 + (1 - tt) ** 2 * sigma**2, tt - (1 - tt) * sigma**2
    assert loss == pytest.approx(var_u - cov**2 / var_x, rel=0.01)
    worse = ((v(x_t, t, None) + 0.1 - u) ** 2).mean().item()
    assert worse > loss + 0.009


def test_time_follows_beta_skewed_toward_noise():
    t = sample_time(100000, alpha=1.5, gen=torch.Generator().manual_seed(0))
    assert t.min() >= 0.001 and t.max() <= 1.0
    assert t.mean().item() == pytest.approx(0.001 + 0.999 * 0.6, abs=0.005)  # Beta(1.5, 1) has mean 0.6
    assert (t > 0.5).float().mean().item() == pytest.approx(1 - 0.5**1.5, abs=0.01)  # CDF t^1.5


def test_shortcut_targets_are_the_field_itself_on_straight_paths():
    """Two half steps along a straight path land where one full step does: the target is v* again."""
    a0 = torch.tensor([0.5, -0.5]).view(1, 1, 2)
    actions = a0.expand(64, 3, 2)
    noise = torch.randn(64, 3, 2, generator=torch.Generator().manual_seed(2))
    field = point_mass_field(a0)
    x_t, t, d_index, target = shortcut_targets(field, actions, noise, levels=4)
    torch.testing.assert_close(target, field(x_t, t, d_index), atol=1e-5, rtol=0)
    d = step_size(d_index)
    assert set(d.tolist()) <= {1.0, 0.5, 0.25, 0.125} and (t - d >= -1e-6).all()
    torch.testing.assert_close(x_t, interpolate(actions, noise, t))


def test_euler_span_targets_reproduce_the_teacher_sampler_in_few_steps():
    """On a curved field (Gaussian data), 1 or 2 steps of the distilled targets land exactly where 10 Euler
    steps of the field do; two bootstrapped half steps of the field do not."""
    field = gaussian_field(mu=0.7, sigma=0.3)
    noise = torch.randn(512, 3, 2, generator=torch.Generator().manual_seed(3))
    teacher = euler_sample(field, noise, steps=10)
    ones, halves = torch.ones(len(noise)), torch.full((len(noise),), 0.5)

    one_step = noise - euler_span(field, noise, ones, ones, teacher_steps=10)
    torch.testing.assert_close(one_step, teacher, atol=1e-5, rtol=0)
    half = noise - 0.5 * euler_span(field, noise, ones, halves, teacher_steps=10)
    two_steps = half - 0.5 * euler_span(field, half, halves, halves, teacher_steps=10)
    torch.testing.assert_close(two_steps, teacher, atol=1e-5, rtol=0)
    bootstrap = noise - 0.5 * field(noise, ones, None)
    bootstrap = bootstrap - 0.5 * field(bootstrap, halves, None)
    assert (bootstrap - teacher).abs().max() > 1e-2

    x_t, t, d_index, target = euler_span_targets(
        field, noise, noise, levels=4, teacher_steps=10, gen=torch.Generator().manual_seed(4)
    )
    d = step_size(d_index)
    assert set(d.tolist()) == {1.0, 0.5, 0.25, 0.125} and (t - d >= -1e-6).all()
    torch.testing.assert_close(target, euler_span(field, x_t, t, d, teacher_steps=10))


def test_step_indices():
    assert step_size(torch.tensor([0, 1, 2, 3])).tolist() == [0.0, 1.0, 0.5, 0.25]
    assert steps_to_index(10, shortcut=False) == 0
    assert steps_to_index(1, shortcut=True) == 1 and steps_to_index(2, shortcut=True) == 2
    with pytest.raises(ValueError, match="power-of-two"):
        steps_to_index(3, shortcut=True)
    with pytest.raises(ValueError, match="at least one"):
        euler_sample(lambda x, t, d: x, torch.zeros(1, 1, 1), steps=0)
