import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from world_model.lam.losses import FlowNet, ramp
from world_model.lam.model import LAMConfig, LatentActionModel
from world_model.layers import warp
from world_model.metrics import psnr, ssim

TINY = dict(image_size=16, patch_size=4, clip_len=4, dim=32, heads=2, idm_layers=1, fdm_layers=1, code_dim=8)


def moving_squares(n: int, clip_len: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    """(n, T, 3, size, size) clips of a bright square moving one pixel per frame in one of 4 directions."""
    g = torch.Generator().manual_seed(seed)
    clips = torch.zeros(n, clip_len, 3, size, size)
    directions = [(1, 0), (-1, 0), (0, 1), (0, -1)]
    for i in range(n):
        dy, dx = directions[i % 4]
        y, x = (int(v) for v in torch.randint(4, size - 8, (2,), generator=g))
        for t in range(clip_len):
            clips[i, t, :, y + dy * t : y + dy * t + 4, x + dx * t : x + dx * t + 4] = 1.0
    return clips


@pytest.mark.parametrize("quantizer", ["nsvq", "vq", "fsq"])
def test_shapes(quantizer):
    model = LatentActionModel(LAMConfig(**TINY, quantizer=quantizer))
    out = model(torch.rand(2, 4, 3, 16, 16))
    D = model.cfg.code_dim
    assert out.predicted.shape == (2, 3, 3, 16, 16) and out.flow.shape == (2, 3, 2, 16, 16)
    assert out.latents.shape == (2, 3, 4, D) and out.codes.shape == (2, 3, 4)
    assert out.codes.min() >= 0 and out.codes.max() < model.quantizer.num_codes
    # Shorter clips (an episode's tail when labelling) work too.
    assert model.encode(torch.rand(1, 2, 3, 16, 16)).codes.shape == (1, 1, 4)


def test_continuous_latents_pass_unquantized_and_have_no_codes():
    model = LatentActionModel(LAMConfig(**TINY, quantizer="none"))
    clips = torch.rand(2, 4, 3, 16, 16)
    out = model(clips)
    assert out.codes is None and out.quantizer_loss == 0
    assert torch.equal(out.latents, model.idm(clips))
    with pytest.raises(ValueError, match="continuous"):
        model.latents_from_codes(torch.zeros(1, 4, dtype=torch.long))


READOUTS = [(q, "position") for q in ("nsvq", "vq", "fsq", "none")] + [
    (q, "pooled") for q in ("nsvq", "none")
]


@pytest.mark.parametrize("quantizer, readout", READOUTS)
def test_gradients_reach_the_encoder_through_the_quantizer(quantizer, readout):
    model = LatentActionModel(LAMConfig(**TINY, quantizer=quantizer, readout=readout))
    clips = torch.rand(2, 4, 3, 16, 16)
    out = model(clips)
    # to_pixels starts at zero (the decoder begins as "copy frame 0"); give it weights so the
    # reconstruction depends on the latents.
    torch.nn.init.normal_(model.fdm.to_pixels.weight, std=0.1)
    out = model(clips)
    (out.predicted - clips[:, 1:]).abs().mean().backward()
    assert model.idm.patch_embed.weight.grad.abs().sum() > 0
    readouts = [model.idm.readout] if readout == "position" else [model.idm.pool_score, model.idm.pool_value]
    assert all(layer.weight.grad.abs().sum() > 0 for layer in readouts)


def test_the_pooled_readout_reads_the_latents_where_the_frame_changed():
    model = LatentActionModel(LAMConfig(**TINY, quantizer="none", readout="pooled")).eval()
    torch.nn.init.zeros_(model.idm.pool_score.weight)  # no learned preference: only the change weighs
    torch.nn.init.zeros_(model.idm.pool_score.bias)
    values = {}
    model.idm.pool_value.register_forward_hook(lambda module, args, out: values.update(out=out))
    clip = torch.rand(1, 1, 3, 16, 16).repeat(1, 2, 1, 1, 1)  # a still scene
    clip[0, 1, :, 4:8, 8:12] = torch.rand(3, 4, 4)  # but patch (1, 2) of the 4x4 grid changes
    with torch.no_grad():
        z = model.idm(clip)  # (1, 1, N, D)
    patch_values = values["out"][0, 0].unflatten(-1, z.shape[-2:])  # (P, N, D)
    off_the_change = (z[0, 0] - patch_values[1 * 4 + 2]).abs().max()
    off_the_mean = (z[0, 0] - patch_values.mean(0)).abs().max()  # what pooling without the change gives
    assert off_the_change < 0.2 * off_the_mean
    with pytest.raises(ValueError, match="readout"):
        LAMConfig(**TINY, readout="mean")


def test_the_linear_flow_decoder_moves_pixels_in_proportion_to_the_latents():
    model = LatentActionModel(LAMConfig(**TINY, quantizer="none", decoder="linear_flow")).eval()
    frames, latents = torch.rand(2, 3, 3, 16, 16), 0.01 * torch.randn(2, 3, 4, 8)
    with torch.no_grad():
        predicted, still = model.fdm(frames, torch.zeros_like(latents))
        _, flow = model.fdm(frames, latents)
        _, flow_sum = model.fdm(frames, 2 * latents + latents.roll(1, dims=0))
        _, flow_other = model.fdm(frames, latents.roll(1, dims=0))
    assert predicted.shape == (2, 3, 3, 16, 16) and still.abs().max() == 0  # no latent, no motion
    assert flow.abs().max() > 1e-3
    torch.testing.assert_close(flow_sum, 2 * flow + flow_other, atol=1e-4, rtol=1e-3)  # tanh ~ linear here
    out = model(torch.rand(2, 4, 3, 16, 16))
    (out.predicted.mean() + out.flow.mean()).backward()
    assert model.idm.readout.weight.grad.abs().sum() > 0  # the flows start random: the latents learn at once
    with pytest.raises(ValueError, match="decoder"):
        LAMConfig(**TINY, decoder="pixels")


def test_the_embedding_target_alone_trains_the_inverse_dynamics():
    model = LatentActionModel(LAMConfig(**TINY, quantizer="none", target="embedding", target_ema=0.9))
    fdm = model.embedding_fdm
    out = model(torch.rand(2, 4, 3, 16, 16))
    (out.predicted.mean() + out.flow.mean()).backward(retain_graph=True)  # the pixel decoder reads only
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.idm.parameters())
    out.embedding_loss.backward()
    assert (
        model.idm.readout.weight.grad.abs().sum() > 0 and fdm.encoder.patch_embed.weight.grad.abs().sum() > 0
    )
    assert all(p.grad is None for p in fdm.target_encoder.parameters())  # the target has no gradient
    target, online = fdm.target_encoder.patch_embed.weight, fdm.encoder.patch_embed.weight
    torch.testing.assert_close(target, online)  # starts as a copy
    with torch.no_grad():
        online.add_(1.0)
    before = target.clone()
    fdm.update_target()
    torch.testing.assert_close(target, before + 0.1)  # moves (1 - ema) of the way to the online encoder
    fixed = LatentActionModel(LAMConfig(**TINY, target="embedding", target_ema=1.0)).embedding_fdm
    before = fixed.target_encoder.patch_embed.weight.clone()
    with torch.no_grad():
        fixed.encoder.patch_embed.weight.add_(1.0)
    fixed.update_target()
    assert torch.equal(fixed.target_encoder.patch_embed.weight, before)  # ema 1: a fixed random target
    assert LatentActionModel(LAMConfig(**TINY)).embedding_fdm is None  # pixels: as before
    with pytest.raises(ValueError, match="target must be pixels or embedding"):
        LAMConfig(**TINY, target="flow")


def test_warp_moves_pixels_by_the_flow():
    image = torch.zeros(1, 1, 8, 8)
    image[0, 0, 2, 3] = 1.0
    torch.testing.assert_close(warp(image, torch.zeros(1, 2, 8, 8)), image, atol=1e-5, rtol=0)
    flow = torch.zeros(1, 2, 8, 8)
    flow[:, 0] = -2.0  # each pixel samples two to its left: the content moves two pixels right
    moved = warp(image, flow)
    assert moved[0, 0, 2, 5].item() == pytest.approx(1.0, abs=1e-5)
    assert moved.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_the_decoder_only_sees_latents_up_to_its_step():
    model = LatentActionModel(LAMConfig(**TINY)).eval()
    torch.nn.init.normal_(model.fdm.to_pixels.weight, std=0.1)
    first, latents = torch.rand(1, 3, 16, 16), torch.randn(1, 3, 4, 8)
    changed = latents.clone()
    changed[:, 2] += 1.0  # the last step's latents
    a, b = model.decode(first, latents), model.decode(first, changed)
    assert torch.allclose(a[:, :2], b[:, :2], atol=1e-6)
    assert not torch.allclose(a[:, 2], b[:, 2])


@pytest.mark.parametrize(
    "frames, message",
    [
        (torch.rand(1, 4, 3, 32, 32), "16x16"),  # another resolution
        (torch.rand(1, 4, 1, 16, 16), "RGB"),  # grayscale
        (torch.rand(1, 1, 3, 16, 16), "2..4 frames"),  # a single frame
        (torch.rand(1, 6, 3, 16, 16), "2..4 frames"),  # longer than the model's window
    ],
)
def test_bad_frames_are_explained(frames, message):
    with pytest.raises(ValueError, match=message):
        LatentActionModel(LAMConfig(**TINY)).encode(frames)


def test_bad_config_is_explained():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        LAMConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="nsvq, vq, fsq or none"):
        LAMConfig(quantizer="kmeans")
    with pytest.raises(ValueError, match="readout_dim must be >= 1"):
        LAMConfig(readout_dim=0)


def test_readout_dim_sets_what_each_patch_passes_to_the_latents():
    model = LatentActionModel(LAMConfig(**TINY, quantizer="none", readout_dim=5))
    P = model.cfg.patches_per_frame
    assert model.idm.squeeze.out_features == 5 and model.idm.readout.in_features == P * 5
    assert model.idm(torch.rand(2, 4, 3, 16, 16)).shape == (2, 3, 4, TINY["code_dim"])


def test_overfits_a_handful_of_clips():
    torch.manual_seed(0)
    clips = moving_squares(8)
    model = LatentActionModel(LAMConfig(**TINY, quantizer="fsq", fsq_levels=[3, 3, 3]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    copy_error = (clips[:, :-1] - clips[:, 1:]).abs().mean().item()  # copying the previous frame
    for _ in range(300):
        out = model(clips)
        loss = (out.predicted - clips[:, 1:]).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    error = (model(clips).predicted - clips[:, 1:]).abs().mean().item()
    assert error < 0.25 * copy_error, (error, copy_error)


def test_ssim_psnr_and_ramp():
    x = torch.rand(2, 3, 16, 16)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    assert ssim(x, 1 - x).item() < 0.5
    assert psnr(x, x).min() > 90
    noisy = (x + 0.1).clamp(0, 1)
    mse = ((noisy - x) ** 2).flatten(1).mean(1)
    assert torch.allclose(psnr(noisy, x), -10 * torch.log10(mse))
    assert [ramp(s, 10, 4) for s in (0, 9, 10, 11, 13, 50)] == [0.0, 0.0, 0.25, 0.5, 1.0, 1.0]
    assert ramp(0, 0, 0) == 1.0


def test_motion_mask_scores_where_the_frame_changed():
    from world_model.lam.losses import masked_mse, motion_mask

    clips = moving_squares(4)  # a 4-pixel square moving one pixel per frame on black
    prev, real = clips[:, :-1], clips[:, 1:]
    mask = motion_mask(prev, real, pad=1)
    assert mask.shape == (4, 3, 1, 16, 16)
    # The one-pixel strips the square left and entered, dilated by a pixel: 3 x 6 on each side.
    assert (mask.flatten(2).sum(-1) == 2 * 3 * 6).all()
    assert (mask * (prev + real).amax(2, keepdim=True)).sum() > 0  # it covers the square's edges
    copy_error = prev - real
    # Copying is wrong on the 8 pixels that changed: 8 / 36 of the mask, 8 / 256 of the frame.
    assert masked_mse(copy_error, mask).item() == pytest.approx(8 / 36)
    assert copy_error.pow(2).mean().item() == pytest.approx(8 / 256)
    assert masked_mse(torch.zeros_like(real), mask) == 0
    assert masked_mse(copy_error, torch.zeros_like(mask)) == 0  # a still clip: no motion, no term


def test_frozen_flow_net_passes_gradients_to_inputs_only():
    net = FlowNet(width=8)
    a, b = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16, requires_grad=True)
    flow = net.frozen(a, b)
    assert flow.shape == (1, 2, 16, 16)
    flow.abs().sum().backward()
    assert b.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())
    assert torch.allclose(flow, net(a, b))


# ---------------------------------------------------------------------------------------------- training job
def train_cfg(root, out_dir, steps: int, **train_overrides):
    """The root config's lam groups, shrunk to a tiny model and a few steps on the fixture dataset."""
    model = dict(TINY, image_size=64, patch_size=16, clip_len=4, tokens_per_step=2, quantizer="nsvq",
                 num_codes=8, mlp_ratio=2.0, fsq_levels=[2, 2, 2])  # fmt: skip
    train = OmegaConf.load("conf/train/lam/cpu.yaml")
    train.merge_with(
        {
            "dataset": str(root / "video"),
            "out_dir": str(out_dir),
            "steps": steps,
            "batch_size": 3,
            "lr_warmup": 2,
            "log_every": 2,
            "val_every": 4,
            "ckpt_every": 3,
            "val_clips": 4,
            "val_fraction": 0.2,
            "dead_codes": {"every": 2, "until": 1.0},
            "loss": {"flow": {"start": 1, "warmup": 2}},
            "action_supervision": {"dataset": str(root / "demos")},
        }  # fmt: skip
    )
    train.merge_with(train_overrides)
    task = {"image_key": "observation.images.image", "action_key": "action"}
    return OmegaConf.create({"model": {"lam": model}, "train": {"lam": train}, "task": task})


def test_decoder_flow_term_is_computed_only_when_weighted(datasets, tmp_path):
    from world_model.lam.train import compute_loss

    cfg = train_cfg(datasets[0], tmp_path, steps=1).train.lam.loss
    model = LatentActionModel(LAMConfig(**TINY))
    clips, gen = moving_squares(2), torch.Generator().manual_seed(0)
    assert "decoder_flow" not in compute_loss(model, FlowNet(width=8), clips, 0, cfg, gen)[1]
    cfg.decoder_flow.weight = 0.05
    loss, terms, weights, _ = compute_loss(model, FlowNet(width=8), clips, 0, cfg, gen)
    assert weights["decoder_flow"] == 0.05 and torch.isfinite(terms["decoder_flow"]) and torch.isfinite(loss)


def test_labels_cover_every_transition_once(datasets, tmp_path):
    from world_model.lam.label import (
        encode_transitions,
        label_dataset,
        latent_labels,
        window_starts,
        write_labels,
    )
    from world_model.lam.model import load_lam
    from world_model.lam.train import train

    assert window_starts(8, 4) == [(0, 4), (3, 4), (6, 2)]
    assert window_starts(7, 4) == [(0, 4), (3, 4)]
    root = datasets[0]
    train(train_cfg(root, tmp_path, steps=2))
    model = load_lam(tmp_path)
    labels = label_dataset(model, root / "demos", "observation.images.image")
    codes, episodes = labels["codes"], labels["episode_index"].numpy()
    last_of_episode = np.r_[episodes[1:] != episodes[:-1], True]
    assert (codes[torch.from_numpy(last_of_episode)] == -1).all()
    assert (codes[torch.from_numpy(~last_of_episode)] >= 0).all()
    # A window's codes are what the model gives that window on its own.
    frames = torch.rand(7, 3, 64, 64).mul(255).to(torch.uint8)
    window = model.encode(frames[3:7][None].float() / 255).codes[0]
    assert torch.equal(latent_labels(model, frames)[3:6], window)
    # The latents before quantization are the inverse dynamics' output for that window, and quantize to the codes.
    codes_of_frames, latents = encode_transitions(model, frames)
    assert torch.allclose(latents[3:6], model.idm(frames[3:7][None].float() / 255)[0], atol=1e-5)
    assert torch.equal(model.quantizer(latents[:6]).codes, codes_of_frames[:6])
    assert (codes_of_frames[-1] == -1).all() and (latents[-1] == 0).all()
    # The probe reads the code's vector, whether it comes from the codes or from the latents.
    from bench.lam import transition_features

    by_codes = model.latents_from_codes(codes_of_frames[:6]).flatten(1).detach().numpy()
    assert np.allclose(transition_features(model, latents[:6]), by_codes)
    # A stride-2 model labels transition i -> i+2: what it gives every other frame, from each offset.
    model.cfg.frame_stride = 2
    strided_codes = encode_transitions(model, frames)[0]
    model.cfg.frame_stride = 1
    for offset in (0, 1):
        assert torch.equal(strided_codes[offset::2], latent_labels(model, frames[offset::2]))
    assert (strided_codes[-2:] == -1).all() and (strided_codes[:-2] >= 0).all()
    write_labels(labels, model, tmp_path / "labels.safetensors", {"dataset": "demos"})
    back = load_file(tmp_path / "labels.safetensors")
    assert torch.equal(back["codes"], codes) and back["codebook"].shape == (8, model.cfg.code_dim)


@pytest.mark.parametrize("quantizer", ["nsvq", "vq", "fsq", "none"])
def test_probe_features_are_the_quantized_vectors(quantizer):
    from bench.lam import transition_features
    from world_model.lam.quantize import code_stats

    model = LatentActionModel(LAMConfig(**TINY, quantizer=quantizer))
    model(torch.rand(2, 4, 3, 16, 16))  # the first training batch seeds the VQ codebooks
    model.eval()
    latents = model.idm(torch.rand(3, 4, 3, 16, 16)).detach().flatten(0, 1)  # (9, N, D)
    codes = model.quantizer(latents).codes
    expected = latents if quantizer == "none" else model.latents_from_codes(codes)
    assert np.allclose(transition_features(model, latents), expected.detach().flatten(1).numpy(), atol=1e-6)
    if quantizer == "none":  # no codes, no code statistics
        assert codes is None and code_stats(codes, model.quantizer.num_codes) == {}
    else:
        assert set(code_stats(codes.flatten(), model.quantizer.num_codes)) == {"codebook_usage", "perplexity"}
    model.train()
    with pytest.raises(ValueError, match="eval mode"):
        transition_features(model, latents)


def test_continuous_model_trains_and_labels_with_its_latents(datasets, tmp_path):
    from world_model.lam.label import encode_transitions, label_dataset, write_labels
    from world_model.lam.model import load_lam
    from world_model.lam.train import train

    cfg = train_cfg(datasets[0], tmp_path, steps=2)
    cfg.model.lam.quantizer = "none"
    summary = train(cfg)
    assert np.isfinite(summary["psnr_pred"]) and "codebook_usage" not in summary
    model = load_lam(tmp_path)
    frames = torch.rand(7, 3, 64, 64).mul(255).to(torch.uint8)
    codes, latents = encode_transitions(model, frames)
    assert codes is None
    assert torch.allclose(latents[3:6], model.idm(frames[3:7][None].float() / 255)[0], atol=1e-5)
    # No codes to label with: the labels are the latents, NaN where a transition has no next frame.
    labels = label_dataset(model, datasets[0] / "demos", "observation.images.image")
    assert "codes" not in labels
    latents, episodes = labels["latents"], labels["episode_index"].numpy()
    last_of_episode = torch.from_numpy(np.r_[episodes[1:] != episodes[:-1], True])
    assert latents.shape == (len(episodes), model.cfg.tokens_per_step, model.cfg.code_dim)
    assert latents[last_of_episode].isnan().all() and latents[~last_of_episode].isfinite().all()
    write_labels(labels, model, tmp_path / "labels.safetensors", {})
    back = load_file(tmp_path / "labels.safetensors")
    assert set(back) == {"latents", "episode_index", "frame_index"}  # no codebook: there is none


def test_embedding_target_model_trains_saves_its_target_and_scores_it(datasets, tmp_path):
    from world_model.lam.model import load_lam
    from world_model.lam.train import train

    cfg = train_cfg(datasets[0], tmp_path, steps=3)
    cfg.model.lam.quantizer, cfg.model.lam.target = "none", "embedding"
    summary = train(cfg)
    assert summary["embedding_mse"] > 0 and summary["embedding_target_spread"] > 0
    assert np.isfinite(summary["embedding_latent_gain"]) and np.isfinite(summary["psnr_pred"])
    model = load_lam(tmp_path)
    fdm = model.embedding_fdm
    # Saved after three EMA steps: the target lags the online encoder.
    assert not torch.equal(fdm.target_encoder.patch_embed.weight, fdm.encoder.patch_embed.weight)


def test_shift_moves_each_clip_as_a_whole(datasets, tmp_path):
    from world_model.lam.train import LAMTask

    cfg = train_cfg(datasets[0], tmp_path, steps=1, shift=3)
    task = LAMTask(cfg, torch.device("cpu"))
    draw = task.draw(0, torch.Generator().manual_seed(0), 4)
    offsets, positions = draw[-1], torch.arange(4)
    clips = task.micro_batch(draw, positions, 0)[0]
    plain = task.train_bank.clips(draw[0])
    for i, (dx, dy) in enumerate(offsets.T.tolist()):
        # Output pixel (y, x) is input pixel (y + dy - 3, x + dx - 3), edges repeated: check the interior.
        inner = plain[i][..., max(0, dy - 3) : 64 + min(0, dy - 3), max(0, dx - 3) : 64 + min(0, dx - 3)]
        out = clips[i][..., max(0, 3 - dy) : 64 + min(0, 3 - dy), max(0, 3 - dx) : 64 + min(0, 3 - dx)]
        assert torch.equal(out, inner)  # every frame of the clip by the same offset
    assert (offsets != 3).any()
    cfg.train.lam.shift = 0
    assert LAMTask(cfg, torch.device("cpu")).draw(0, torch.Generator().manual_seed(0), 4)[-1] is None


def test_action_supervision_puts_the_action_into_the_quantized_latents():
    from world_model.lam.train import action_loss

    torch.manual_seed(0)
    clips = moving_squares(16)
    directions = torch.tensor([(0.0, 1), (0, -1), (1, 0), (-1, 0)])  # (dx, dy) of moving_squares' 4 motions
    actions = directions[torch.arange(16) % 4][:, None].expand(16, 3, 2)  # (B, T-1, 2)
    model = LatentActionModel(LAMConfig(**TINY, tokens_per_step=1))  # NSVQ, 8 codes
    head = torch.nn.Linear(model.cfg.code_dim, 2)
    params = [*model.idm.parameters(), *model.quantizer.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    first = action_loss(model, head, clips, actions).item()
    for _ in range(200):
        loss = action_loss(model, head, clips, actions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()  # the nearest codes themselves, without NSVQ's substituted noise
    assert action_loss(model, head, clips, actions).item() < 0.02 * first


def test_supervised_training_reads_a_few_demos_and_says_which(datasets, tmp_path):
    from world_model.lam.model import load_lam
    from world_model.lam.train import train
    from world_model.training.checkpoint import read_trained_meta

    supervision = {"weight": 1.0, "episodes": 1, "batch_size": 2}
    summary = train(train_cfg(datasets[0], tmp_path, steps=2, action_supervision=supervision))
    assert np.isfinite(summary["action_loss"])
    assert read_trained_meta(tmp_path, "latent-action")["supervised_episodes"] == [0]
    assert (tmp_path / "checkpoints" / "last" / "action_head.safetensors").exists()
    load_lam(tmp_path)  # inference needs only the model
    assert "action_loss" not in train(train_cfg(datasets[0], tmp_path / "plain", steps=1))


def test_probe_helpers_recover_a_linear_map():
    from bench.lam import apply_ridge, cosine, fit_ridge, r2_score

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    true_w = rng.normal(size=(5, 3))
    y = x @ true_w + 0.5
    w = fit_ridge(x, y, alpha=1e-8)
    assert r2_score(y, apply_ridge(w, x)) == pytest.approx(1.0, abs=1e-6)
    assert r2_score(y, np.broadcast_to(y.mean(0), y.shape)) == pytest.approx(0.0, abs=1e-9)
    assert cosine(np.array([[1.0, 0, 0]]), np.array([[2.0, 0, 0]]))[0] == pytest.approx(1.0)


def test_supervised_idm_ceiling_reads_motion_and_not_noise():
    from bench.lam import supervised_idm_r2

    rng = np.random.default_rng(0)
    n, size = 400, 16
    before = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    after = torch.zeros_like(before)
    shift = rng.integers(-2, 3, size=(n, 2))
    for i, (dy, dx) in enumerate(shift):
        y, x = rng.integers(3, size - 7, size=2)
        before[i, :, y : y + 4, x : x + 4] = 255
        after[i, :, y + dy : y + dy + 4, x + dx : x + dx + 4] = 255
    motion = np.c_[shift, shift.sum(1)].astype(float)
    fit = np.arange(n) < 300
    assert supervised_idm_r2(before, after, motion, fit, steps=200).mean() > 0.6
    noise = rng.normal(size=(n, 3))  # nothing in the frames says this
    assert supervised_idm_r2(before, after, noise, fit, steps=200).mean() < 0.1
