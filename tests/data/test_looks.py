"""The demo frames' look augmentation (data/looks.py): background parts found from the demos' median frame
take new colours and the frame a new light, the moving things keep theirs, and training runs draw it from
their seeded generator."""

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from data.looks import LookAugment

SIZE = 16
CONFIG = {
    "parts": 3,
    "min_share": 0.1,
    "colour": [0.1, 0.95],
    "light": [1.0, 1.0],
    "tint": 0.0,
    "threshold": 0.05,
}


def scene(n: int = 40) -> torch.Tensor:
    """(n, 3, 16, 16) uint8: a grey backdrop over a brown table with a dark 2x2 base that never moves, and a
    green 3x3 object somewhere on the table in each frame."""
    frames = torch.empty(n, 3, SIZE, SIZE)
    frames[:, :, :5] = torch.tensor([0.5, 0.5, 0.5])[:, None, None]
    frames[:, :, 5:] = torch.tensor([0.55, 0.45, 0.3])[:, None, None]
    frames[:, :, 0:2, 7:9] = 0.1
    gen = torch.Generator().manual_seed(0)
    for i, (r, c) in enumerate(torch.randint(6, SIZE - 3, (n, 2), generator=gen).tolist()):
        frames[i, :, r : r + 3, c : c + 3] = torch.tensor([0.1, 0.8, 0.1])[:, None, None]
    return (frames * 255).round().to(torch.uint8)


def augment(prob: float = 1.0, **changes) -> LookAugment:
    return LookAugment.fit(scene(), OmegaConf.create(CONFIG | {"prob": prob} | changes))


def test_background_parts_take_the_drawn_colours_and_the_moving_object_keeps_its_own():
    looks = augment()
    assert looks.recolour.tolist().count(True) == 2  # the table and the backdrop; the small base is left
    frames = scene(4).float()[:, None].expand(-1, 2, -1, -1, -1) / 255  # (B, T=2, 3, H, W)
    draw = looks.draw(4, torch.Generator().manual_seed(1))
    out = looks(frames, draw)
    torch.testing.assert_close(out[:, 0], out[:, 1])  # a sample's frames share one look
    backdrop, table = looks.parts[3, 0], looks.parts[SIZE - 1, 0]
    for b in range(4):
        torch.testing.assert_close(out[b, 0, :, 3, 0], draw.colours[b, backdrop], atol=2e-3, rtol=0)
        torch.testing.assert_close(out[b, 0, :, SIZE - 1, 0], draw.colours[b, table], atol=2e-3, rtol=0)
        torch.testing.assert_close(out[b, 0, :, 0, 7], frames[b, 0, :, 0, 7])  # the dark base
    moving = (frames[:, 0] - looks.median).abs().amax(1) > 0.05  # (B, H, W): the objects' pixels
    assert moving.any()
    torch.testing.assert_close(
        out[:, 0].permute(1, 0, 2, 3)[:, moving], frames[:, 0].permute(1, 0, 2, 3)[:, moving]
    )


def test_the_light_scales_every_pixel_and_unchosen_samples_are_untouched():
    frames = scene(6).float()[:, None] / 255
    gen = torch.Generator().manual_seed(2)
    dark = augment(colour=[0.5, 0.5], light=[0.5, 0.5])
    out = dark(frames, dark.draw(6, gen))
    moving = (frames[:, 0] - dark.median).abs().amax(1) > 0.05
    torch.testing.assert_close(
        out[:, 0].permute(1, 0, 2, 3)[:, moving], frames[:, 0].permute(1, 0, 2, 3)[:, moving] / 2
    )
    never = augment(prob=0.0)
    torch.testing.assert_close(never(frames, never.draw(6, gen)), frames, rtol=0, atol=0)
    half = augment(prob=0.5)
    draw = half.draw(400, torch.Generator().manual_seed(3))
    assert 150 < int(draw.apply.sum()) < 250


def test_bad_frames_are_refused():
    with pytest.raises(ValueError, match=r"\(F, 3, H, W\) uint8"):
        LookAugment.fit(scene().float(), OmegaConf.create(CONFIG | {"prob": 1.0}))


def test_a_training_run_with_new_looks_is_seeded(datasets, tmp_path):
    """The looks come from the run's generator: the same seed gives the same losses, and they are not
    the losses of the run without them."""
    from tests.training.runs import compose_cfg, overrides, record_losses, train_function

    train = train_function("policy")
    inputs = SimpleNamespace(root=datasets[0], backbone=None)

    def losses(name: str, *extra: str) -> list[float]:
        cfg = compose_cfg(
            [*overrides("policy", inputs, tmp_path / name, 4), "train.policy.backbone=null", *extra]
        )
        return record_losses(train, cfg)

    looks = "train.policy.looks.prob=1.0"
    first, again, plain = losses("a", looks), losses("b", looks), losses("plain")
    assert first == again and len(first) == 4
    assert first != plain


def test_checkers_darken_cells_of_a_recoloured_part_and_a_gradient_tilts_the_light():
    frames = scene(8).float()[:, None] / 255
    looks = augment(colour=[0.5, 0.5], pattern=1.0)
    out = looks(frames, looks.draw(8, torch.Generator().manual_seed(4)))[:, 0, 0]  # (B, H, W), red
    still = (frames[:, 0] - looks.median).abs().amax(1) < 0.05  # (B, H, W): no object there
    table = still & (looks.parts == looks.parts[SIZE - 1, 0])
    for image, mask in zip(out, table, strict=True):
        values = image[mask].unique()
        assert len(values) == 2 and abs(values.max().item() - 0.5) < 2e-3  # 0.5 and its dark cells
        assert 0.6 - 1e-3 <= values.min().item() / values.max().item() <= 0.9 + 1e-3
    tilted = augment(colour=[0.5, 0.5], gradient=0.5)
    draw = tilted.draw(8, torch.Generator().manual_seed(5))
    out = tilted(frames, draw)[:, 0, 0, SIZE - 1]  # (B, W): the bottom row, red channel
    expected = 0.5 * (1 + draw.slopes[:, :1] * torch.linspace(-1, 1, SIZE) + draw.slopes[:, 1:])
    torch.testing.assert_close(out, expected.clamp(0, 1), atol=3e-3, rtol=0)


def test_the_example_grid_shows_each_frame_above_its_new_look(datasets, tmp_path):
    import PIL.Image

    from data.looks import main

    out = tmp_path / "looks.png"
    main([str(datasets[0] / "demos"), "--out", str(out), "--count", "2", "--pattern", "1"])
    width, height = PIL.Image.open(out).size
    assert (width, height) == (3 * 3 * 64, 2 * 3 * 64)  # median and two frames, above their new looks; x3
