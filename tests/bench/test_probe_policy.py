"""The probe's chunk error is judged against the constant predictor's actual error, per dimension."""

import torch

from bench.probe_policy import chunk_skill


def test_constant_dimensions_are_not_scored():
    constant = torch.tensor([1.0, 0.8, 1.2, 0.0, 0.0, 0.9, 1.0])  # roll, pitch: constant in the demos
    assert chunk_skill(constant.clone(), constant) == 0.0  # the constant predictor itself
    assert chunk_skill(torch.zeros(7), constant) == 1.0
    half = constant / 2 + torch.tensor([0, 0, 0, 5.0, 5.0, 0, 0])  # bad roll/pitch count for nothing
    assert abs(chunk_skill(half, constant) - 0.5) < 1e-6
