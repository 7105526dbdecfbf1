"""The video-prediction backbone and the chunk sampling it trains on."""

import pytest
import torch

from data.chunks import EpisodeBank
from world_model.backbone.model import BackboneConfig, VideoBackbone, backbone_loss, detail_weights, tokenize
from world_model.layers import SpatialSoftmax

TINY = BackboneConfig(
    image_size=32, patch_size=8, horizon=5, tokens_per_step=2, num_codes=8, dim=32, heads=2, layers=1
)


def test_shapes_and_context_tokens():
    model = VideoBackbone(TINY)
    frames, words = torch.rand(3, 2, 3, 32, 32), tokenize(["put carrot on plate"] * 3, TINY.vocab_size)
    out = model(frames, words)
    assert out.frame.shape == (3, 3, 32, 32) and out.logits.shape == (3, 5, 2, 8)
    assert out.hidden.shape == (3, 16 + 1 + 10, 32)
    assert (
        model.features(out).shape == (3, TINY.num_context_tokens, 32) and TINY.num_context_tokens == 4 + 1 + 5
    )
    # Zero-initialised pixel head: the untrained prediction is frame t itself.
    torch.testing.assert_close(out.frame, frames[:, 1])


def test_conv_stem_and_keypoints():
    """The conv stem gives the same token grid; its keypoint token is one more context token, and the
    spatial softmax places a map's peak at its x, y in [-1, 1]."""
    cfg = BackboneConfig(**(TINY.to_dict() | {"stem": "conv", "stem_channels": 8, "keypoints": 4}))
    model = VideoBackbone(cfg)
    out = model(torch.rand(3, 2, 3, 32, 32), tokenize(["stack the cube"] * 3, cfg.vocab_size))
    assert out.hidden.shape == (3, 16 + 1 + 10, 32) and out.keypoints.shape == (3, 8)
    assert (
        model.features(out).shape == (3, cfg.num_context_tokens, 32)
        and cfg.num_context_tokens == 4 + 1 + 5 + 1
    )

    described = VideoBackbone(BackboneConfig(**(cfg.to_dict() | {"keypoint_descriptor": 3})))
    out = described(torch.rand(3, 2, 3, 32, 32), tokenize(["stack the cube"] * 3, cfg.vocab_size))
    assert out.descriptors.shape == (3, 4, 3)
    assert described.features(out).shape == (3, cfg.num_context_tokens, 32)  # the keypoint token reads them
    assert described.keypoint_decoder(out.keypoints, out.descriptors).shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match="set keypoints > 0"):
        BackboneConfig(stem="conv", keypoint_descriptor=3)
    forecasting = VideoBackbone(BackboneConfig(**(cfg.to_dict() | {"keypoint_forecast": True})))
    words = tokenize(["stack the cube"] * 3, cfg.vocab_size)
    out = forecasting(torch.rand(3, 2, 3, 32, 32), words)
    future = torch.rand(3, 3, 32, 32)
    forecast = (forecasting.forecast_keypoints(out, words), forecasting.keypoints_of(future))
    assert forecast[0].shape == forecast[1].shape == (3, 8)
    _, terms = backbone_loss(
        out, future, torch.full((3, 5, 2), -1), 1.0, 0.0, forecast=forecast, forecast_weight=1.0
    )
    torch.testing.assert_close(terms["forecast_mse"], ((forecast[0] - forecast[1]) ** 2).mean())

    maps = torch.full((2, 1, 8, 8), -10.0)
    maps[0, 0, 1, 6] = maps[1, 0, 6, 1] = 10.0  # one hot cell: row 1 col 6, and row 6 col 1
    x, y = SpatialSoftmax()(maps).T
    assert x[0] > 0.6 and y[0] < -0.6 and x[1] < -0.6 and y[1] > 0.6
    with pytest.raises(ValueError, match="stem must be 'conv'"):
        BackboneConfig(keypoints=4)
    with pytest.raises(ValueError, match="stem must be one of"):
        BackboneConfig(stem="resnet")


def test_loss_ignores_codes_past_the_episode_end():
    model = VideoBackbone(TINY)
    out = model(torch.rand(2, 2, 3, 32, 32), tokenize(["a", "b"], TINY.vocab_size))
    codes = torch.randint(8, (2, 5, 2))
    codes[1, 3:] = -1
    loss, terms = backbone_loss(out, torch.rand(2, 3, 32, 32), codes, frame_weight=1.0, action_weight=1.0)
    valid = codes >= 0
    expected = torch.nn.functional.cross_entropy(out.logits[valid], codes[valid])
    torch.testing.assert_close(terms["action_ce"], expected)
    assert torch.isfinite(loss)
    _, none = backbone_loss(out, torch.rand(2, 3, 32, 32), torch.full_like(codes, -1), 1.0, 1.0)
    assert none["action_ce"].item() == 0.0


def test_continuous_latents_are_regressed_where_labelled():
    """With latent_dim > 0 the queries regress a continuous LAM's latents: MSE over the labelled steps
    (NaN marks the rest), and the decoder's step tokens embed the predicted latents."""
    cfg = BackboneConfig(**(TINY.to_dict() | {"latent_dim": 3}))
    model = VideoBackbone(cfg)
    frames, words = torch.rand(2, 2, 3, 32, 32), tokenize(["a", "b"], cfg.vocab_size)
    out = model(frames, words)
    assert out.logits is None and out.latents.shape == (2, 5, 2, 3)
    assert model.features(out).shape == (2, cfg.num_context_tokens, 32)
    targets = torch.randn(2, 5, 2, 3)
    targets[1, 3:] = float("nan")  # past the episode's end
    loss, terms = backbone_loss(out, torch.rand(2, 3, 32, 32), targets, frame_weight=1.0, action_weight=1.0)
    valid = ~targets[..., 0, 0].isnan()
    torch.testing.assert_close(terms["action_mse"], ((out.latents[valid] - targets[valid]) ** 2).mean())
    assert torch.isfinite(loss) and "action_ce" not in terms
    _, none = backbone_loss(out, torch.rand(2, 3, 32, 32), torch.full_like(targets, float("nan")), 1.0, 1.0)
    assert none["action_mse"].item() == 0.0
    with pytest.raises(ValueError, match="do not match the predictions"):
        backbone_loss(out, torch.rand(2, 3, 32, 32), targets[..., :2], 1.0, 1.0)
    with pytest.raises(ValueError, match="latent_dim must be >= 0"):
        BackboneConfig(latent_dim=-1)
    # The queries learn the latents of a fixed batch (the head has a signal to fit).
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        _, terms = backbone_loss(model(frames, words), frames[:, 1], targets, 0.0, 1.0)
        first = terms["action_mse"].item() if first is None else first
        optimizer.zero_grad()
        terms["action_mse"].backward()
        optimizer.step()
    assert terms["action_mse"].item() < 0.1 * first


def test_backbone_pretrains_on_a_continuous_lams_latents(datasets, tmp_path):
    """A LAM without a quantizer labels the video with its latents; the backbone trains on them
    standardized, scores them against their mean, and records their size in its config."""
    from types import SimpleNamespace

    from tests.training.runs import compose_cfg, make_labels, overrides, train_function
    from world_model.backbone.model import load_backbone
    from world_model.backbone.train import load_labelled_video

    root = datasets[0]
    lam_overrides = [
        *overrides("lam", SimpleNamespace(root=root), tmp_path / "lam", 2),
        "model.lam.quantizer=none",
    ]
    train_function("lam")(compose_cfg(lam_overrides))
    labels = make_labels(root, tmp_path, lam_dir=tmp_path / "lam")
    bank, shape = load_labelled_video(root / "video", labels, "observation.images.image", None)
    lam_cfg = compose_cfg(lam_overrides).model.lam
    assert shape == {
        "num_codes": 8,
        "tokens_per_step": lam_cfg.tokens_per_step,
        "latent_dim": lam_cfg.code_dim,
    }
    latents = bank.columns["latents"]
    labelled = latents[~latents[:, 0, 0].isnan()]
    assert 0 < len(labelled) < len(latents)  # each episode's last frame has no transition
    torch.testing.assert_close(labelled.mean(0), torch.zeros_like(labelled[0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(labelled.std(0), torch.ones_like(labelled[0]), atol=1e-4, rtol=0)
    run = overrides("backbone", SimpleNamespace(root=root, labels=labels), tmp_path / "backbone", 3)
    summary = train_function("backbone")(compose_cfg(run))
    assert {"action_mse", "constant_mse", "action_r2"} <= set(summary) and "action_acc" not in summary
    model = load_backbone(tmp_path / "backbone")
    assert model.cfg.latent_dim == lam_cfg.code_dim
    out = model(torch.rand(2, 2, 3, 64, 64), tokenize(["stack the block"] * 2, model.cfg.vocab_size))
    assert torch.isfinite(model.features(out)).all()


def test_tokenize_is_stable_and_padded():
    ids = tokenize(["Put the carrot on the plate", "stack"], vocab_size=64, max_words=8)
    assert (
        ids.shape == (2, 8) and (ids[0, :6] > 0).all() and (ids[0, 6:] == 0).all() and (ids[1, 1:] == 0).all()
    )
    assert ids[0, 1] == ids[0, 4]  # "the" twice, case-insensitive hashing
    assert torch.equal(ids, tokenize(["put the carrot on the plate", "stack"], vocab_size=64, max_words=8))


def test_bad_inputs_are_refused():
    model = VideoBackbone(TINY)
    with pytest.raises(ValueError, match="frames t-1 and t"):
        model(torch.rand(2, 3, 3, 32, 32), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="backbone takes 32x32"):
        model(torch.rand(2, 2, 3, 64, 64), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="pool 3 does not divide"):
        BackboneConfig(image_size=32, patch_size=8, pool=3)


def test_episode_bank_windows():
    # Two episodes of 4 and 3 frames; frame k holds the value k in every pixel.
    frames = torch.arange(7, dtype=torch.uint8).view(7, 1, 1, 1).expand(7, 3, 2, 2)
    action = torch.arange(7, dtype=torch.float32)[:, None]
    bank = EpisodeBank.from_arrays(
        frames, {"action": action}, torch.tensor([0, 0, 0, 0, 5, 5, 5]), ["a"] * 4 + ["b"] * 3
    )
    w = bank.window(torch.tensor([0, 2, 4, 6]), horizon=3)
    assert w.context.tolist() == [[0, 0], [1, 2], [4, 4], [5, 6]]  # t-1 = t at an episode's start
    assert w.future.tolist() == [3, 3, 6, 6]  # t+3, clamped to the episode's last frame
    assert w.chunk.tolist() == [[0, 1, 2], [2, 3, 3], [4, 5, 6], [6, 6, 6]]
    assert w.chunk_is_pad.tolist() == [[False] * 3, [False, False, True], [False] * 3, [False, True, True]]
    sub = bank.subset([5])
    assert (
        len(sub) == 3
        and sub.tasks == ["b"] * 3
        and sub.window(torch.tensor([0]), 2).context.tolist() == [[0, 0]]
    )
    with pytest.raises(ValueError, match="one row per frame"):
        EpisodeBank.from_arrays(frames, {"action": action[:3]}, torch.zeros(7, dtype=torch.long), ["a"] * 7)


def test_keypoint_decoder_learns_where_a_blob_is():
    """The keypoint bottleneck: frame t drawn back from 2K numbers alone. On frames holding one bright
    square at random places, a few hundred steps draw it back far better than the mean frame, and the
    weighted loss counts the square's pixels more than the plain background."""
    torch.manual_seed(0)
    cfg = BackboneConfig(
        **(TINY.to_dict() | {"stem": "conv", "stem_channels": 16, "keypoints": 2, "layers": 0})
    )
    model = VideoBackbone(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def frames_with_a_square(n):
        frames = torch.zeros(n, 3, 32, 32)
        for i, (r, c) in enumerate(torch.randint(2, 26, (n, 2)).tolist()):
            frames[i, :, r : r + 5, c : c + 5] = 1.0
        return frames

    words = tokenize(["x"] * 32, cfg.vocab_size)
    for _ in range(300):
        now = frames_with_a_square(32)
        out = model(torch.stack([now, now], dim=1), words)
        drawn = model.keypoint_decoder(out.keypoints)
        loss, terms = backbone_loss(out, now, torch.full((32, 5, 2), -1), 0.0, 0.0, drawn, now, 1.0, 20.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    now = frames_with_a_square(64)
    with torch.no_grad():
        drawn = model.keypoint_decoder(
            model(torch.stack([now, now], dim=1), words[:1].expand(64, -1)).keypoints
        )
    mean_frame_mse = ((now - now.mean(0)) ** 2).mean()
    assert ((drawn - now) ** 2).mean() < 0.5 * mean_frame_mse
    assert terms["keypoint_mse"] > 0 and terms["action_ce"] == 0
    weights, square = detail_weights(now, 20.0), now.mean(1, keepdim=True) > 0.5
    assert weights[square].mean() > 5 * weights[~square].mean()


def test_change_map_learns_where_the_next_frame_differs():
    """change_map: a heatmap of where frame t+H differs from frame t, conditioned on the instruction. On
    synthetic frames where a blob appears at an instruction-dependent place, it learns that place: the
    cross-entropy drops from uniform towards the target's entropy and the map peaks at the blob."""
    from world_model.backbone.model import change_target
    from world_model.layers import soft_argmax

    cfg = BackboneConfig(
        **(TINY.to_dict() | {"stem": "conv", "stem_stride": 2, "stem_channels": 16, "stem_norm": True})
        | {"change_map": True, "layers": 0}
    )
    torch.manual_seed(0)
    model = VideoBackbone(cfg)
    now = torch.rand(4, 3, 32, 32) * 0.1
    future = now.clone()
    future[:2, :, 4:8, 20:24] = 1.0  # "left" instruction: change at the top right
    future[2:, :, 22:26, 6:10] = 1.0  # "right": bottom left
    words = tokenize(["move left"] * 2 + ["move right"] * 2, cfg.vocab_size)
    frames, codes = torch.stack([now, now], dim=1), torch.full((4, 5, 2), -1)
    target, moved = change_target(now, future, 16)
    assert target.shape == (4, 256) and moved.all() and torch.allclose(target.sum(-1), torch.ones(4))
    assert not change_target(now, now, 16)[1].any()  # a still frame has no target

    opt, losses = torch.optim.AdamW(model.parameters(), lr=3e-3), []
    for _ in range(200):
        out = model(frames, words)
        loss, terms = backbone_loss(
            out, future, codes, 0.0, 0.0, now=now, change=model.change_logits(out, words), change_weight=1.0
        )
        losses.append(terms["change_ce"].item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[0] > 5.0 and losses[-1] < 3.5  # log(256) = 5.5 at the start
    peaks = soft_argmax(model.change_logits(model(frames, words), words)[:, None])[:, 0]
    assert (peaks[:2, 0] > 0.2).all() and (peaks[:2, 1] < -0.2).all()  # top right
    assert (peaks[2:, 0] < -0.2).all() and (peaks[2:, 1] > 0.2).all()  # bottom left
    with pytest.raises(ValueError, match="change_map draws on the conv stem"):
        BackboneConfig(**(TINY.to_dict() | {"change_map": True}))


def test_change_prior_is_the_mean_map_and_scores_it():
    """The held-out prior is the mean of the training frames' change targets, and `evaluate` scores it as
    the cross-entropy of that one map against every target (between the floor and the uniform map's)."""
    from world_model.backbone.model import change_target
    from world_model.backbone.train import evaluate, mean_change_map
    from world_model.layers import heatmap_cross_entropy

    torch.manual_seed(0)
    frames = torch.full((12, 3, 32, 32), 10, dtype=torch.uint8)  # still, except for two blobs
    frames[3:6, :, 4:10, 4:10] = 255  # episode 0 changes at the top left from frame 3 on
    frames[9:, :, 20:26, 20:26] = 255  # episode 1 at the bottom right
    no_codes = {"codes": torch.full((12, 2), -1)}  # frames alone: no latent actions
    bank = EpisodeBank.from_arrays(frames, no_codes, torch.tensor([0] * 6 + [1] * 6), ["move it"] * 12)
    prior = mean_change_map(bank, horizon=3, size=16)
    rows = torch.arange(12)
    target, moved = change_target(frames.float() / 255, frames[bank.window(rows, 3).future].float() / 255, 16)
    assert prior.shape == (256,) and torch.allclose(prior.sum(), torch.tensor(1.0))
    assert prior.view(16, 16)[2:5, 2:5].sum() > 0.4 and prior.view(16, 16)[10:13, 10:13].sum() > 0.4

    cfg = BackboneConfig(
        **(
            TINY.to_dict()
            | {"stem": "conv", "stem_channels": 8, "stem_stride": 2, "change_map": True, "layers": 0}
        )
    )
    scores = evaluate(VideoBackbone(cfg), bank, majority_code=0, change_prior=prior, num=12)
    expected = heatmap_cross_entropy(
        prior.clamp_min(1e-12).log().expand(int(moved.sum()), -1).view(-1, 16, 16), target[moved]
    )
    assert scores["change_ce_prior"] == pytest.approx(expected.item(), rel=1e-5)
    assert scores["change_ce_floor"] < scores["change_ce_prior"] < torch.log(torch.tensor(256.0)).item()
