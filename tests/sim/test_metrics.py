import numpy as np
import pytest

from sim.metrics import mmrv, pearson_r, wilson_interval


@pytest.mark.parametrize(
    "k, n, expected",
    [
        (5, 10, (0.2366, 0.7634)),  # hand-computed: (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
        (0, 10, (0.0, 0.2775)),
        (10, 10, (0.7225, 1.0)),
        (45, 50, (0.7864, 0.9565)),
    ],
)
def test_wilson_interval_hand_computed(k, n, expected):
    assert wilson_interval(k, n) == pytest.approx(expected, abs=1e-4)


def test_wilson_interval_bad_input():
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_mmrv_hand_computed():
    # Policies 1 and 2 are swapped by the evaluator; the gap between them in the reference is 0.4.
    # Policy 0 has no violation, policies 1 and 2 each have 0.4: mean 0.8 / 3.
    assert mmrv([0.1, 0.5, 0.9], [0.2, 0.8, 0.6]) == pytest.approx(0.8 / 3)
    assert mmrv([0.1, 0.5, 0.9], [0.0, 0.3, 0.31]) == 0.0  # same order: no violation
    assert mmrv([0.1, 0.5, 0.9], [0.9, 0.5, 0.1]) == pytest.approx((0.8 + 0.4 + 0.8) / 3)


def test_pearson_matches_numpy():
    a, b = [0.1, 0.5, 0.9, 0.3], [0.2, 0.8, 0.6, 0.1]
    assert pearson_r(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert pearson_r([0.1, 0.2, 0.3], [0.3, 0.2, 0.1]) == pytest.approx(-1.0)


def test_agreement_metrics_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="equal length"):
        mmrv([0.1, 0.2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="equal length"):
        pearson_r([0.1], [0.2])
