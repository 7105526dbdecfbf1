"""Shared fixtures: small datasets generated once per session for the data and world_model tests."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network

from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from data.generate import close_envs, generate_demos, generate_video

TASK = OmegaConf.create({"tasks": ["stack_block", "carrot_on_plate"], "image_size": 64, "fps": 5})
DEMOS = OmegaConf.create({"episodes": 2, "protocols": ["visual_matching"], "noise": 0.005, "seed": 0})
VIDEO = OmegaConf.create(
    {
        "min_clips": 12,
        "clip_len": 8,
        "robot_fraction": 0.5,
        "play_fraction": 0.5,
        "play_steps": 16,
        "protocols": ["visual_matching", "variant_aggregation"],
        "noise": 0.01,
        "seed": 7,
    }
)
KEYS = ["observation.images.image", "observation.state", "action"]


@pytest.fixture(scope="session")
def cfg():
    """The generation configs behind `datasets`."""
    return SimpleNamespace(task=TASK, demos=DEMOS, video=VIDEO, keys=KEYS)


@pytest.fixture(scope="session")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    try:
        demos = generate_demos(DEMOS, TASK, root / "demos")
        video = generate_video(VIDEO, TASK, root / "video")
    finally:
        close_envs()
    return root, demos, video
