"""How a global batch is split among processes and micro-batches; the DDP step itself is checked against
one process in tests/policies/test_pipeline.py."""

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from world_model.training.distributed import make_accelerator, shard_rows


def test_shards_cover_the_global_batch_once():
    rows = torch.arange(100, 112)
    shards = [shard_rows(rows, SimpleNamespace(num_processes=2, process_index=r), 3) for r in range(2)]
    assert all(len(s) == 3 and all(len(m) == 2 for m in s) for s in shards)
    seen = torch.cat([m for s in shards for m in s])
    assert sorted(seen.tolist()) == list(range(12))
    one = shard_rows(rows, SimpleNamespace(num_processes=1, process_index=0), 1)
    assert len(one) == 1 and one[0].tolist() == list(range(12))


def test_bad_splits_and_settings_are_refused():
    with pytest.raises(
        ValueError, match="batch_size=10 must split evenly into grad_accum=2 micro-batches x 2"
    ):
        shard_rows(torch.arange(10), SimpleNamespace(num_processes=2, process_index=0), 2)
    with pytest.raises(ValueError, match="precision='fp16': expected one of"):
        make_accelerator(OmegaConf.create({"device": "cpu", "precision": "fp16"}))
    with pytest.raises(ValueError, match="bf16 needs device=cuda"):
        make_accelerator(OmegaConf.create({"device": "cpu", "precision": "bf16"}))


def test_slurm_launcher_preset_composes_on_submitit():
    from hydra import compose, initialize

    with initialize(version_base="1.3", config_path="../../conf"):
        cfg = compose("config", overrides=["hydra/launcher=slurm_gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher") and launcher.gpus_per_node == 1
