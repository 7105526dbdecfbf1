"""The ViPRA-style policy: LeRobot's contract, overfitting one chunk, save/load with its processors,
refusals."""

import json
from collections import deque

import pytest
import torch
from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.pretrained import PreTrainedPolicy
from safetensors.torch import load_file

from policies.vipra import VipraConfig, VipraPolicy, make_policy
from policies.vipra.processor_vipra import MIN_STD, make_vipra_pre_post_processors
from tests.policies.tiny import STATS, TINY_BACKBONE, processed, save_trained, tiny_config


def make_batch(B=2, H=6, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "observation.images.image": torch.rand(B, 2, 3, 32, 32, generator=g),
        "observation.state": torch.randn(B, 7, generator=g),
        "action": 0.1 + 0.5 * torch.randn(B, H, 7, generator=g),
        "action_is_pad": torch.zeros(B, H, dtype=torch.bool),
        "task": ["put carrot on plate", "stack the green block on the yellow block"][:B] * (B // 2 or 1),
    }


def test_distilled_shortcut_targets_train_the_step_sizes():
    """With shortcut_teacher_steps the shortcut rows learn the decoder's own Euler spans: a positive loss
    whose gradient reaches the decoder; a negative count is refused by name."""
    torch.manual_seed(0)
    policy = VipraPolicy(tiny_config(shortcut_fraction=0.5, shortcut_teacher_steps=10))
    loss, terms = policy.forward(make_batch())
    assert terms["shortcut_loss"] > 0
    loss.backward()
    assert all(p.grad is not None for p in policy.decoder.parameters())
    with pytest.raises(ValueError, match="shortcut_teacher_steps"):
        tiny_config(shortcut_teacher_steps=-1)


def test_policy_follows_the_lerobot_contract():
    torch.manual_seed(0)
    policy = VipraPolicy(tiny_config())
    assert isinstance(policy, PreTrainedPolicy) and policy.name == "vipra" and policy.config.type == "vipra"
    assert policy.config.observation_delta_indices == [-1, 0]
    assert policy.config.action_delta_indices == list(range(6))
    batch = make_batch()
    loss, terms = policy.forward(batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and {"fm_loss", "shortcut_loss"} <= set(terms)
    loss.backward()
    assert all(p.grad is not None for p in policy.decoder.parameters())
    torch.optim.AdamW(policy.get_optim_params(), lr=1e-3).step()  # the groups are valid optimizer input

    policy.eval()
    assert policy.predict_action_chunk(batch).shape == (2, 6, 7)
    obs = {k: batch[k] for k in ("observation.state", "task")} | {
        "observation.images.image": batch["observation.images.image"][:, 1]
    }
    calls = []
    real = policy.predict_action_chunk
    policy.predict_action_chunk = lambda b, noise=None: calls.append(1) or real(b, noise)
    policy.reset()
    actions = [policy.select_action(obs) for _ in range(7)]
    assert all(a.shape == (2, 7) for a in actions)
    assert len(calls) == 3  # a new chunk every n_action_steps = 3 calls
    policy.reset()
    assert isinstance(policy._queue, deque) and not policy._queue and policy._prev_frame is None


def test_select_action_executes_the_chunk_in_order():
    policy = VipraPolicy(tiny_config()).eval()
    obs = {
        "observation.images.image": torch.rand(1, 3, 32, 32),
        "observation.state": torch.zeros(1, 7),
        "task": ["x"],
    }
    noise = torch.randn(1, 6, 7, generator=torch.Generator().manual_seed(0))
    chunk = policy.predict_action_chunk(obs, noise)  # no previous frame: frame t stands in for t-1
    policy.reset()
    first = [policy.select_action(obs, noise) for _ in range(3)]
    torch.testing.assert_close(torch.stack(first, 1), chunk[:, :3])


def test_overfits_one_chunk():
    """Two samples with different images and instructions: the sampler must reproduce each one's chunk.
    Trained on the preprocessor's batches, sampled through the postprocessor, as the trainers and the
    harness do."""
    torch.manual_seed(0)
    policy = VipraPolicy(tiny_config(shortcut_fraction=0.0))
    runner = processed(policy)
    batch = make_batch(B=2)
    normalized = runner.preprocessor(dict(batch))
    torch.testing.assert_close(normalized["action"], (batch["action"] - 0.1) / 0.5)  # STATS' action
    opt = torch.optim.AdamW(policy.get_optim_params(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 800)
    for _ in range(800):
        loss, _ = policy.forward(normalized)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    policy.eval()
    sampled = runner.predict_action_chunk(
        batch, noise=torch.randn(2, 6, 7, generator=torch.Generator().manual_seed(1))
    )
    error = ((sampled - batch["action"]) / 0.5).pow(2).mean().item()  # in normalized units; chance is ~2
    assert error < 0.08, error  # ~0.02 (seeds 0-2), ~1 with the chunk's mean, ~2 at chance


def test_save_and_load_give_identical_actions(tmp_path):
    """The folder holds LeRobot's files (config, weights, the processor pair and its statistics); the
    loaded policy samples bit for bit what the trained one does, in the dataset's units."""
    torch.manual_seed(0)
    policy = VipraPolicy(tiny_config(binary_action_dims=[6])).eval()
    save_trained(policy, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["type"] == "vipra"
    assert not [
        k for k in load_file(tmp_path / "model.safetensors") if k.endswith((".mean", ".std"))
    ]  # stats: not in the weights
    saved = {p.name for p in tmp_path.iterdir()}
    assert {"model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json"} <= saved
    assert any(n.startswith("policy_preprocessor_step_") and n.endswith(".safetensors") for n in saved)
    assert isinstance(PreTrainedConfig.from_pretrained(tmp_path), VipraConfig)
    loaded = make_policy(tmp_path)
    batch = make_batch()
    noise = torch.randn(2, 6, 7, generator=torch.Generator().manual_seed(3))
    chunk = loaded.predict_action_chunk(batch, noise=noise)
    torch.testing.assert_close(
        chunk, processed(policy).predict_action_chunk(batch, noise=noise), rtol=0, atol=0
    )
    assert set(chunk[..., 6].unique().tolist()) <= {0.0, 1.0}  # the saved postprocessor snaps the gripper
    torch.testing.assert_close(loaded.normalize("action", STATS["action"]["mean"]), torch.zeros(7))
    few = make_policy(tmp_path, few_step=True)  # config overrides for evaluation
    assert few.config.few_step and few.predict_action_chunk(batch, noise=noise).shape == (2, 6, 7)


def test_statistics_are_floored_checked_and_never_silently_missing(tmp_path):
    config = VipraPolicy(tiny_config()).config
    constant = STATS | {"observation.state": {"mean": torch.zeros(7), "std": torch.zeros(7)}}
    runner = processed(VipraPolicy(tiny_config()), constant)  # the demos hold roll and pitch constant
    state = runner.preprocessor({"observation.state": torch.full((1, 7), 1e-4)})["observation.state"]
    torch.testing.assert_close(state, torch.full((1, 7), 1e-4 / MIN_STD))
    with pytest.raises(ValueError, match="pass dataset_stats"):
        make_vipra_pre_post_processors(config)
    with pytest.raises(ValueError, match="dataset stats need mean and std of 'action'"):
        make_vipra_pre_post_processors(config, {"observation.state": STATS["observation.state"]})
    with pytest.raises(
        ValueError, match=r"statistics of 'action' have shapes \(6,\) / \(7,\), expected \(7,\)"
    ):
        make_vipra_pre_post_processors(
            config, STATS | {"action": {"mean": torch.zeros(6), "std": torch.ones(7)}}
        )
    # A folder without the processors, or whose processors lack the statistics, does not load.
    policy = VipraPolicy(tiny_config())
    policy.save_pretrained(tmp_path / "bare")
    with pytest.raises(FileNotFoundError, match="missing.*policy_preprocessor.json"):
        make_policy(tmp_path / "bare")
    save_trained(policy, tmp_path / "no_stats")
    for stats_file in (tmp_path / "no_stats").glob("policy_*processor_step_*.safetensors"):
        stats_file.unlink()
    with pytest.raises(FileNotFoundError, match="missing.*normalizer_processor.safetensors"):
        make_policy(tmp_path / "no_stats")
    from lerobot.processor import make_default_pre_post_processors

    policy.save_pretrained(tmp_path / "empty")
    for processor in make_default_pre_post_processors(policy.config, None):  # LeRobot's, built without stats
        processor.save_pretrained(tmp_path / "empty")
    with pytest.raises(
        ValueError, match=r"NormalizerProcessorStep has no statistics for \['observation.state', 'action'\]"
    ):
        make_policy(tmp_path / "empty")


def test_bad_inputs_are_refused(tmp_path):
    policy = VipraPolicy(tiny_config())
    batch = make_batch()
    with pytest.raises(ValueError, match=r"'action' must be \(B, 6, 7\)"):
        policy.forward(batch | {"action": batch["action"][..., :6]})
    with pytest.raises(
        ValueError, match=r"'observation.state' must be \(B, 7\) for this policy, got \(2, 6\)"
    ):
        policy.predict_action_chunk(batch | {"observation.state": batch["observation.state"][:, :6]})
    with pytest.raises(
        ValueError, match=r"'observation.state' has shape \(2, 6\); the policy was trained on \(7,\)"
    ):
        processed(policy).predict_action_chunk(
            batch | {"observation.state": batch["observation.state"][:, :6]}
        )
    with pytest.raises(ValueError, match="backbone takes 32x32"):
        policy.predict_action_chunk(batch | {"observation.images.image": torch.rand(2, 2, 3, 64, 64)})
    with pytest.raises(ValueError, match="horizon 6 must equal chunk_size 8"):
        tiny_config(chunk_size=8)
    policy.save_pretrained(tmp_path / "small")
    other = tiny_config(dim=64)
    with pytest.raises(ValueError, match="does not match this policy's config"):
        VipraPolicy.from_pretrained(tmp_path / "small", config=other)
    with pytest.raises(FileNotFoundError, match="expected model.safetensors"):
        make_policy(tmp_path / "nowhere")


def test_waypoint_maps_learn_where_the_hand_goes_and_feed_the_decoder():
    """waypoint_weight > 0: heatmaps on the conv stem's map say where the gripper next closes and opens,
    scored by cross-entropy where the demos have the event, and each map's peak is a decoder token."""
    from policies.vipra.modeling_vipra import WAYPOINT_KEY, WAYPOINT_PAD_KEY
    from world_model.layers import heatmap_targets, soft_argmax

    conv = TINY_BACKBONE.to_dict() | {
        "stem": "conv",
        "stem_stride": 2,
        "stem_channels": 16,
        "stem_norm": True,
    }
    torch.manual_seed(0)
    policy = VipraPolicy(
        tiny_config(shortcut_fraction=0.0, waypoint_weight=1.0, binary_action_dims=[6], backbone=conv)
    )
    target = torch.tensor([[[0.3, -0.5], [-0.6, 0.2]], [[0.0, 0.0], [0.1, 0.7]]])
    batch = make_batch(B=2) | {
        WAYPOINT_KEY: target,
        WAYPOINT_PAD_KEY: torch.tensor([[False, False], [True, False]]),  # no close left: not scored
    }
    loss, terms = policy.forward(batch)
    assert "waypoint_loss" in terms
    loss.backward()
    assert all(p.grad is not None for p in policy.waypoint_maps.parameters())
    assert policy.backbone.stem.body[0].weight.grad.abs().sum() > 0  # the maps train the stem
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    for _ in range(150):
        loss, terms = policy.forward(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    points = policy._encode_with_waypoint(batch)[1][1]  # (B, 2, 2) each map's soft-argmax
    keep = ~batch[WAYPOINT_PAD_KEY]
    torch.testing.assert_close(points[keep], target[keep], atol=0.08, rtol=0)  # within a cell of 16
    with pytest.raises(KeyError, match="waypoint"):
        policy.forward(make_batch(B=2))
    with pytest.raises(ValueError, match="binary_action_dims"):
        tiny_config(waypoint_weight=1.0, backbone=conv)  # no binary gripper dim to find the events in
    with pytest.raises(ValueError, match="stem 'conv'"):
        tiny_config(waypoint_weight=1.0, binary_action_dims=[6])  # patch stem: no map to draw on
    # with a calibrated camera the tokens also carry each peak on the table, in metres
    calibrated = tiny_config(
        shortcut_fraction=0.0, waypoint_weight=1.0, binary_action_dims=[6], backbone=conv,
        camera_calibration={"pos": [0.78, 0.0, 0.42], "target": [0.3, 0.0, 0.0], "fovy": 50},
        waypoint_heights=[0.06, 0.08],
    )  # fmt: skip
    assert torch.isfinite(VipraPolicy(calibrated).forward(batch)[0])
    with pytest.raises(ValueError, match="waypoint_heights"):
        tiny_config(
            waypoint_weight=1.0, binary_action_dims=[6], backbone=conv, camera_calibration={"fovy": 50}
        )
    # the targets' soft-argmax is their point, to a small fraction of a cell (the image's edge cuts a blob)
    soft = heatmap_targets(target, 16).log().view(2, 2, 16, 16)
    torch.testing.assert_close(soft_argmax(soft), target, atol=5e-3, rtol=0)


def test_table_points_see_the_image_points_where_the_camera_projected_them():
    import numpy as np

    from data.camera import PinholeCamera
    from policies.vipra.modeling_vipra import TablePoints

    camera = PinholeCamera((0.78, 0.0, 0.42), (0.3, 0.0, 0.0), 50.0, 64)
    points = np.array([[0.2, -0.1, 0.06], [0.45, 0.2, 0.08]])
    unit = torch.tensor(camera.to_unit(camera.project(points)), dtype=torch.float32)[None]  # (1, 2, 2)
    seen = TablePoints(camera, [0.06, 0.08])(unit)
    torch.testing.assert_close(seen, torch.tensor(points, dtype=torch.float32)[None], atol=1e-4, rtol=0)


def test_a_second_stage_starts_from_the_trained_policys_weights(tmp_path):
    """train.policy.init_policy: the new run's policy holds the trained one's weights exactly (its own
    random init gone); a policy of another size, or a folder without weights, is refused by name."""
    from policies.train_policy import init_from_policy

    torch.manual_seed(0)
    trained = VipraPolicy(tiny_config())
    save_trained(trained, tmp_path / "trained")
    torch.manual_seed(1)
    second = VipraPolicy(tiny_config(shortcut_fraction=0.25))  # a training-only setting may differ
    init_from_policy(second, tmp_path / "trained")
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(second.state_dict()[key], value, rtol=0, atol=0)

    with pytest.raises(ValueError, match="does not match this policy's config"):
        init_from_policy(VipraPolicy(tiny_config(dim=16)), tmp_path / "trained")
    with pytest.raises(FileNotFoundError, match="init_policy=.*no model.safetensors"):
        init_from_policy(second, tmp_path / "nothing")


def test_decoder_reading_only_the_waypoints_ignores_the_image_tokens():
    """decoder_reads='waypoints': the decoder's memory is the instruction token, the two waypoint tokens
    and the state, so a change of the pooled image tokens that leaves the stem's map alone changes no
    action; with 'all' it does."""
    from policies.vipra.modeling_vipra import WAYPOINT_KEY, WAYPOINT_PAD_KEY

    conv = TINY_BACKBONE.to_dict() | {"stem": "conv", "stem_stride": 2, "stem_channels": 16, "layers": 0}
    batch = make_batch(B=2) | {
        WAYPOINT_KEY: torch.zeros(2, 2, 2),
        WAYPOINT_PAD_KEY: torch.zeros(2, 2, dtype=torch.bool),
    }
    noise = torch.randn(2, 6, 7, generator=torch.Generator().manual_seed(1))
    chunks = {}
    for reads in ("waypoints", "all"):
        torch.manual_seed(0)
        policy = VipraPolicy(
            tiny_config(waypoint_weight=1.0, binary_action_dims=[6], backbone=conv, decoder_reads=reads)
        ).eval()
        memory = policy._encode(batch)
        assert memory[0][0].shape[2] == (1 + 2 + 1 if reads == "waypoints" else 4 + 1 + 6 + 2 + 1)
        original = policy.predict_action_chunk(batch, noise=noise)
        with torch.no_grad():  # the patch embedding feeds the pooled tokens, not the stem's map
            policy.backbone.stem.to_tokens.weight.add_(1.0)
        chunks[reads] = (original, policy.predict_action_chunk(batch, noise=noise))
    torch.testing.assert_close(*chunks["waypoints"])
    assert not torch.allclose(*chunks["all"])
    with pytest.raises(ValueError, match="waypoint_weight > 0"):
        tiny_config(backbone=conv, decoder_reads="waypoints")
    with pytest.raises(ValueError, match="decoder_reads must be one of"):
        tiny_config(backbone=conv, decoder_reads="pixels")


def test_the_hand_anchor_cancels_a_moved_cameras_error_near_the_hand():
    """Through a camera moved since its calibration, an object's point on the table is centimetres off;
    moved by the hand's offset (where the state puts the hand minus where the calibration sees it), it is
    off by far less near the hand. Under the calibrated camera the offset is nil."""
    import numpy as np

    from data.camera import PinholeCamera
    from policies.vipra.modeling_vipra import TablePoints, WaypointHeatmaps

    calibrated = PinholeCamera((0.78, 0.0, 0.42), (0.3, 0.0, 0.0), 50.0, 64)
    moved = PinholeCamera((0.80, 0.03, 0.40), (0.32, -0.02, 0.0), 52.0, 64)
    stats = {"mean": [0.3, 0.0, 0.1], "std": [0.1, 0.1, 0.05]}
    maps = WaypointHeatmaps(8, 16, 7, table=TablePoints(calibrated, [0.02, 0.08]), hand_stats=stats)
    hand, obj = np.array([[0.33, 0.05, 0.10]]), np.array([[0.36, 0.08, 0.02]])
    state = torch.zeros(1, 7)
    state[0, :3] = (torch.tensor(hand[0]) - torch.tensor(stats["mean"])) / torch.tensor(stats["std"])

    def seen_through(camera):
        unit = lambda p: torch.tensor(camera.to_unit(camera.project(p)), dtype=torch.float32)  # noqa: E731
        offset = maps.hand_offset(unit(hand), state)[0]
        on_table = maps.table(unit(obj)[None], heights=torch.tensor([[0.02]]))[0, 0]
        return offset, on_table

    offset, on_table = seen_through(calibrated)
    torch.testing.assert_close(offset, torch.zeros(3), atol=1e-4, rtol=0)
    offset, on_table = seen_through(moved)
    truth = torch.tensor(obj[0, :2], dtype=torch.float32)
    absolute, anchored = (on_table[:2] - truth).norm(), (on_table[:2] + offset[:2] - truth).norm()
    assert absolute > 0.015 and anchored < 0.3 * absolute, (absolute, anchored)  # 1.8 cm -> 0.35 cm
    assert offset[2] == 0  # the table's height is known: only x, y move
    assert maps.maps(torch.zeros(1, 8, 4, 4), torch.zeros(1, 16)).shape[1] == 3  # close, open, the hand
