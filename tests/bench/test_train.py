"""The training-throughput benchmark: FLOP counting on a hand-made case, a CPU run at toy size, and the
clean skip where no GPU is visible."""

import pytest
import torch
from hydra import compose, initialize

from bench.train import flops_per_step, run

TOY = [
    "model.lam.dim=16", "model.lam.heads=2", "model.lam.idm_layers=1", "model.lam.fdm_layers=1",
    "train.lam.batch_size=2", "model.backbone.dim=32", "model.backbone.heads=2", "model.backbone.layers=1",
    "train.backbone.batch_size=2", "model.policy.dim=32", "model.policy.heads=2", "model.policy.layers=1",
    "train.policy.batch_size=2", "model.neural_sim.width=8", "model.neural_sim.levels=2",
    "model.neural_sim.blocks=1", "train.neural_sim.batch_size=2", "bench_train.steps=1", "bench_train.warmup=0",
]  # fmt: skip


def config(*overrides):
    with initialize(version_base="1.3", config_path="../../conf"):
        return compose("config", overrides=[*TOY, *overrides])


def test_flops_of_a_linear_layer_forward_and_backward():
    layer, x = torch.nn.Linear(10, 20, bias=False), torch.rand(4, 10, requires_grad=True)
    # forward 2*B*in*out; backward twice that (gradients of the input and of the weight)
    assert flops_per_step(lambda: layer(x).sum()) == 3 * 2 * 4 * 10 * 20


def test_every_model_is_measured_on_the_cpu():
    report = run(
        config("bench_train.device=cpu", "bench_train.precisions=[fp32]", "bench_train.compile=[false]")
    )
    assert [r["model"] for r in report["rows"]] == ["lam", "backbone", "policy", "neural_sim"]
    for row in report["rows"]:
        assert "error" not in row, row
        assert row["samples_per_s"] > 0 and row["gflops_per_step"] > 0 and row["mfu"] is None
    assert report["device"].startswith("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip where no GPU is visible")
def test_gpu_benchmark_is_skipped_without_a_gpu():
    assert run(config("bench_train.device=cuda")) is None
    with pytest.raises(ValueError, match="bf16, which is measured on GPU only"):
        run(config("bench_train.device=cpu", "bench_train.precisions=[bf16]"))
