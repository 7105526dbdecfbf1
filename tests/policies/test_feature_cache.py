"""The cached-feature path (policies/feature_cache.py): finetuning with a frozen backbone from features
computed once gives the losses of running the backbone at every step, runs no backbone once the file
exists, and refuses a file computed for another backbone or a backbone that learns."""

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from tests.training.runs import compose_cfg, overrides, record_losses, train_function
from world_model.backbone.model import BackboneConfig, VideoBackbone
from world_model.training.checkpoint import save_checkpoint

STEPS = 6


def save_backbone(cfg, path, seed: int):
    """A backbone run folder of the composed (tiny) architecture, random weights of `seed`."""
    torch.manual_seed(seed)
    arch = OmegaConf.to_container(cfg.model.backbone, resolve=True)
    backbone = VideoBackbone(BackboneConfig(**arch))
    optimizer = torch.optim.AdamW(backbone.parameters())
    meta = {"model_config": backbone.cfg.to_dict()}
    save_checkpoint(path, {"model": backbone}, optimizer, 1, torch.Generator(), meta)
    return path


def frozen_run(root, backbone, out_dir, *extra):
    inputs = SimpleNamespace(root=root, backbone=backbone)
    return compose_cfg(
        [*overrides("policy", inputs, out_dir, STEPS), "model.policy.backbone_lr_scale=0", *extra]
    )


def test_cached_features_give_the_losses_of_the_backbone_run_every_step(datasets, tmp_path, monkeypatch):
    root, train = datasets[0], train_function("policy")
    backbone = save_backbone(frozen_run(root, None, tmp_path / "x"), tmp_path / "backbone", seed=0)
    cache = tmp_path / "features.safetensors"

    uncached = record_losses(train, frozen_run(root, backbone, tmp_path / "uncached"))
    computed = record_losses(
        train, frozen_run(root, backbone, tmp_path / "computed", f"train.policy.feature_cache={cache}")
    )
    assert cache.is_file() and len(set(uncached)) > 1  # the losses move: the decoder trains
    torch.testing.assert_close(torch.tensor(computed), torch.tensor(uncached), rtol=1e-5, atol=1e-6)

    calls = []
    real_forward = VideoBackbone.forward
    monkeypatch.setattr(VideoBackbone, "forward", lambda self, *a: calls.append(1) or real_forward(self, *a))
    reread = record_losses(
        train, frozen_run(root, backbone, tmp_path / "reread", f"train.policy.feature_cache={cache}")
    )
    assert calls == []  # the file was read, and no step ran the backbone
    torch.testing.assert_close(torch.tensor(reread), torch.tensor(uncached), rtol=1e-5, atol=1e-6)


def test_a_cache_of_another_backbone_or_a_learning_backbone_is_refused(datasets, tmp_path):
    root, train = datasets[0], train_function("policy")
    first = save_backbone(frozen_run(root, None, tmp_path / "x"), tmp_path / "first", seed=0)
    other = save_backbone(frozen_run(root, None, tmp_path / "x"), tmp_path / "other", seed=1)
    cache = tmp_path / "features.safetensors"
    train(frozen_run(root, first, tmp_path / "a", f"train.policy.feature_cache={cache}"))
    before = cache.read_bytes()

    with pytest.raises(
        ValueError,
        match=r"computed for another run \(backbone: the file's '[0-9a-f]+', this run's '[0-9a-f]+'",
    ):
        train(frozen_run(root, other, tmp_path / "b", f"train.policy.feature_cache={cache}"))
    assert cache.read_bytes() == before  # neither recomputed nor overwritten

    learning = frozen_run(root, first, tmp_path / "c", f"train.policy.feature_cache={cache}")
    learning.model.policy.backbone_lr_scale = 1.0
    with pytest.raises(ValueError, match="needs a frozen pretrained backbone"):
        train(learning)
    shifted = frozen_run(
        root, first, tmp_path / "d", f"train.policy.feature_cache={cache}", "train.policy.shift=2"
    )
    with pytest.raises(ValueError, match="needs train.policy.shift=0"):
        train(shifted)
    recoloured = frozen_run(
        root, first, tmp_path / "e", f"train.policy.feature_cache={cache}", "train.policy.looks.prob=0.5"
    )
    with pytest.raises(ValueError, match=r"looks.prob=0.5 changes the frames at every step"):
        train(recoloured)
