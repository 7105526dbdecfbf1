"""The task's camera calibration against the renderer: a point projected through it lands on what the env
draws there."""

import numpy as np
import pytest
from hydra import compose, initialize

from data.camera import PinholeCamera
from sim.env import TabletopEnv


@pytest.fixture(scope="module")
def camera() -> PinholeCamera:
    with initialize(version_base="1.3", config_path="../../conf"):
        cfg = compose("config")
    return PinholeCamera.from_config(cfg.task.camera, cfg.task.image_size)


def test_projected_objects_are_where_the_env_draws_them(camera):
    """The top of the carrot (orange) and of the plate (white) project onto pixels of their colour in the
    nominal (visual matching) scene, over several scenes."""
    env = TabletopEnv("carrot_on_plate", image_size=camera.image_size)
    try:
        for seed in range(5):
            obs, _ = env.reset(seed=seed)
            image, state = obs["pixels"]["image"].astype(int), obs["environment_state"]
            tops = np.array([state[:3] + [0, 0, 0.014], state[4:7] + [0, 0, 0.006]])
            (cu, cv), (pu, pv) = camera.project(tops).astype(int)
            r, g, b = image[cv, cu]
            assert r > 150 and r > g + 40 > b + 40, f"seed {seed}: carrot pixel {(r, g, b)}"
            assert image[pv, pu].min() > 180, f"seed {seed}: plate pixel {image[pv, pu]}"
    finally:
        env.close()


def test_backprojection_inverts_the_projection(camera):
    points = np.array([[0.2, -0.2, 0.03], [0.45, 0.15, 0.0], [0.3, 0.0, 0.1]])
    uv = camera.project(points)
    np.testing.assert_allclose(camera.backproject(uv, points[:, 2]), points, atol=1e-9)
    np.testing.assert_allclose(
        camera.to_unit([[0, 0], [camera.image_size, camera.image_size]]), [[-1, -1], [1, 1]]
    )
    with pytest.raises(ValueError, match="behind the camera"):
        camera.project(np.array([[2.0, 0.0, 0.5]]))
    with pytest.raises(ValueError, match="missing"):
        PinholeCamera.from_config({"pos": [0, 0, 1]}, 64)
