"""Video-prediction backbone: from two context frames and the instruction, predict the frame H steps
ahead and the H latent actions in between (ViPRA's pretraining task, at CPU scale).

    frames t-1, t (B, 2, 3, H, W) in [0, 1], instruction token ids (B, W)
      └─ tokens: 64 patches of frame t, each with its difference from t-1 (motion so far), embedded
                 linearly (stem "patch") or by a small CNN (stem "conv", optionally with keypoints)
                 + 1 instruction token (bag of hashed words) + H*N latent-action queries
      └─ transformer (bidirectional over all tokens)
           ├─ patch tokens  -> frame t+H as frame t plus a predicted change      (MSE)
           └─ action queries -> logits over the latent-action codebook, per step (cross-entropy),
                               or a continuous LAM's latents, per step (MSE on standardized latents)

Latent actions are the frozen latent action model's discrete codes, so the targets are ViPRA's
discrete tokens trained with cross-entropy; a LAM without a quantizer (LAOM's continuous latents)
labels the video with its latents instead, and the queries regress them (`latent_dim` > 0).
`features` returns what the action decoder reads: pooled patch tokens, the instruction token and one
token per future step carrying the predicted latent actions (their hidden state plus the embedding of
the expected code, or of the predicted latents), and with `keypoints` one token
of the conv stem's spatial-softmax keypoints (where things are: the image policies' spatial prior).

Pretraining can also teach the keypoints (`backbone_loss`'s optional terms): `KeypointDecoder` draws frame
t back from them alone, and a forecaster predicts frame t+H's keypoints from frame t's and the instruction.
"""

import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from world_model.layers import (
    FiLMHeatmaps,
    SpaceTimeBlock,
    SpatialSoftmax,
    heatmap_cross_entropy,
    patchify,
    unpatchify,
)
from world_model.training.checkpoint import load_trained, read_trained_meta

STEMS = ("patch", "conv")


@dataclass
class BackboneConfig:
    image_size: int = 64
    patch_size: int = 8  # 64 patch tokens per frame at 64x64
    horizon: int = 14  # H: predict frame t+H and the H latent actions t -> t+H (ViPRA's 14)
    tokens_per_step: int = 4  # N: latent tokens per transition, as the latent action model names them
    num_codes: int = 8  # the latent action model's codebook size
    # > 0: the latent actions are a continuous LAM's latents of this size per token (quantizer none),
    # regressed; 0: they are codes of a codebook of num_codes, classified.
    latent_dim: int = 0
    vocab_size: int = 512  # hashed instruction words
    dim: int = 128
    heads: int = 4
    layers: int = 4
    mlp_ratio: float = 4.0
    pool: int = 2  # patch tokens are average-pooled pool x pool into the decoder's context
    # "patch": each patch is embedded linearly (a ViT). "conv": a small strided CNN embeds the frames to a
    # map at a quarter of the image size, whose cells become the patch tokens: a spatial prior that
    # places things at 64x64 where a linear patch embedding learns position slowly (bench.localization).
    stem: str = "patch"
    stem_channels: int = 64
    # The conv stem's map is image_size / stem_stride: 4 (16x16 at 64x64), or 2 (32x32) where a small
    # object is a few pixels: the supervised keypoint CNN halves its error on it (bench.localization's
    # cnn_fine), at ~3x the stem's cost.
    stem_stride: int = 4
    # GroupNorm after each convolution of the conv stem: trains a detector of the small objects in far fewer
    # steps (the policies' waypoint heatmaps).
    stem_norm: bool = False
    # > 0 (conv stem only): that many spatial-softmax keypoints of the stem's map, an MLP of their x, y
    # as one more context token: where things are, in image coordinates (robomimic's encoder).
    keypoints: int = 0
    # > 0 (pretraining with the keypoint loss): each keypoint also carries that many numbers of what it
    # sits on (the stem's map averaged under its softmax), painted into its blob by the keypoint decoder,
    # so that one keypoint can follow "the object to pick", whichever it is, by its look.
    keypoint_descriptor: int = 0
    # Pretraining only: a small MLP that forecasts the keypoints of frame t+H from frame t's and the
    # instruction (train.backbone.loss.keypoint_forecast). Where the hand will be is where the object
    # to pick is, so the keypoints at t must hold it: the video's actions teach what to look at.
    keypoint_forecast: bool = False
    # Pretraining only (conv stem): a heatmap head, conditioned on the instruction, predicts where frame t+H
    # will differ from frame t (train.backbone.loss.change_map). In a task's video what changes is where the
    # hand goes, the object it picks and the place it puts it: the stem must find them from frame t.
    change_map: bool = False
    # Feed frame t's difference from frame t-1 (the motion so far). A policy that sees it can read its own
    # last action off the image and repeat it (the copycat problem of behaviour cloning with history):
    # false keeps the channels, zeroed, so that the architecture does not change.
    frame_difference: bool = True

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if (self.image_size // self.patch_size) % self.pool:
            raise ValueError(
                f"pool {self.pool} does not divide the {self.image_size // self.patch_size}-patch grid"
            )
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")
        if self.latent_dim < 0:
            raise ValueError(f"latent_dim must be >= 0 (0: codes), got {self.latent_dim}")
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.stem_stride not in (2, 4):
            raise ValueError(
                f"stem_stride must be 2 or 4 (the conv stem's map: image/2 or image/4), got {self.stem_stride}"
            )
        if self.stem == "conv" and self.patch_size % self.stem_stride:
            raise ValueError(
                f"the conv stem's map is image/{self.stem_stride}: patch_size {self.patch_size} must be a "
                f"multiple of stem_stride {self.stem_stride}"
            )
        if self.change_map and self.stem != "conv":
            raise ValueError(
                f"change_map draws on the conv stem's map: stem must be 'conv' (got {self.stem!r})"
            )
        if self.keypoint_forecast and not self.keypoints:
            raise ValueError("keypoint_forecast forecasts keypoints: set keypoints > 0")
        if self.keypoint_descriptor and not self.keypoints:
            raise ValueError("keypoint_descriptor describes keypoints: set keypoints > 0")
        if self.stem_norm and (self.stem != "conv" or self.stem_channels % 16):
            raise ValueError(
                f"stem_norm groups the conv stem's channels by 8: needs stem 'conv' and stem_channels a "
                f"multiple of 16 (got {self.stem!r}, {self.stem_channels})"
            )
        if self.keypoints and self.stem != "conv":
            raise ValueError(
                f"keypoints come from the conv stem's map: stem must be 'conv' (got {self.stem!r})"
            )

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @property
    def num_context_tokens(self) -> int:
        """Tokens `features` returns: pooled patches + instruction + one per future step (+ keypoints)."""
        return (self.grid // self.pool) ** 2 + 1 + self.horizon + (1 if self.keypoints else 0)

    def to_dict(self) -> dict:
        return asdict(self)


def tokenize(instructions: list[str], vocab_size: int, max_words: int = 16) -> torch.Tensor:
    """Instructions -> (B, max_words) ids: each lower-cased word hashed (crc32) into 1..vocab_size-1; 0 pads.

    A stable hash rather than a fitted vocabulary: nothing to store, any instruction maps somewhere."""
    ids = torch.zeros(len(instructions), max_words, dtype=torch.long)
    for i, text in enumerate(instructions):
        words = re.findall(r"[a-z0-9]+", text.lower())[:max_words]
        for j, word in enumerate(words):
            ids[i, j] = 1 + zlib.crc32(word.encode()) % (vocab_size - 1)
    return ids


@dataclass
class BackboneOutput:
    hidden: torch.Tensor  # (B, P + 1 + H*N, C) final tokens: patches, instruction, action queries
    frame: torch.Tensor  # (B, 3, H, W) predicted frame t+H (unclamped)
    logits: torch.Tensor | None  # (B, H, N, K) latent-action code logits per future step; None if continuous
    keypoints: torch.Tensor | None = None  # (B, 2 * keypoints) x then y in [-1, 1] (conv stem), else None
    descriptors: torch.Tensor | None = None  # (B, keypoints, keypoint_descriptor) with keypoint_descriptor
    fmap: torch.Tensor | None = None  # (B, stem_channels, H/s, W/s) the conv stem's map, else None
    latents: torch.Tensor | None = None  # (B, H, N, latent_dim) predicted continuous latents, else None


class ConvStem(nn.Module):
    """(B, 6, S, S) frame t and its change -> (B, P, C) tokens of an S/p grid and the (B, c, S/s, S/s) map
    they come from (s = stem_stride): a stride-2 convolution, one of stride s/2, one at S/s, then a
    p/s-strided one to the token grid."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        c, k = cfg.stem_channels, cfg.patch_size // cfg.stem_stride
        norm = (lambda ch: nn.GroupNorm(8, ch)) if cfg.stem_norm else (lambda ch: nn.Identity())
        self.body = nn.Sequential(
            nn.Conv2d(6, c // 2, 5, stride=2, padding=2), norm(c // 2), nn.GELU(),
            nn.Conv2d(c // 2, c, 3, stride=cfg.stem_stride // 2, padding=1), norm(c), nn.GELU(),
            nn.Conv2d(c, c, 3, padding=1), norm(c), nn.GELU(),
        )  # fmt: skip
        self.to_tokens = nn.Conv2d(c, cfg.dim, k, stride=k)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.body(x)  # (B, c, S/s, S/s)
        return self.to_tokens(fmap).flatten(2).transpose(1, 2), fmap


class KeypointDecoder(nn.Module):
    """Pretraining only: frame t drawn back from the keypoints alone (a bottleneck of 2K numbers), each
    keypoint a Gaussian blob on the stem's grid, then a small upsampling CNN over them and a learned
    background (Jakab et al. 2018's keypoint bottleneck). For the picture to come back the keypoints must
    sit on what differs between scenes and moves within them, the objects and the hand: the localization
    an image policy needs, learned from actionless video.

        keypoints (B, 2K) x then y in [-1, 1], descriptors (B, K, D) or None -> frame (B, 3, S, S) in [0, 1]
        (unclamped); each blob carries its keypoint's descriptor (D more input maps) when there are some
    """

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        K, c, g = cfg.keypoints, cfg.stem_channels, cfg.image_size // cfg.stem_stride
        self.grid, self.sigma = g, 2.0 / g  # one cell of the grid, in [-1, 1] units
        self.blobs_in = nn.Conv2d(K + cfg.keypoint_descriptor, c, 3, padding=1)
        self.background = nn.Parameter(torch.zeros(1, c, g, g))  # the fixed camera's static scene
        up = [nn.Upsample(scale_factor=2)] if cfg.stem_stride == 4 else []  # to S/2
        self.body = nn.Sequential(
            nn.GELU(), nn.Conv2d(c, c, 3, padding=1), nn.GELU(),
            *up, nn.Conv2d(c, c // 2, 3, padding=1), nn.GELU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(c // 2, 3, 3, padding=1),
        )  # fmt: skip

    def forward(self, keypoints: torch.Tensor, descriptors: torch.Tensor | None = None) -> torch.Tensor:
        x, y = keypoints.chunk(2, dim=1)  # (B, K) each
        line = torch.linspace(-1, 1, self.grid, device=keypoints.device, dtype=keypoints.dtype)
        dx = (line - x[..., None]) ** 2  # (B, K, g): along the width
        dy = (line - y[..., None]) ** 2  # (B, K, g): along the height
        blobs = torch.exp(-(dy[..., :, None] + dx[..., None, :]) / (2 * self.sigma**2))  # (B, K, g, g)
        if descriptors is not None:
            painted = torch.einsum("bkhw,bkd->bdhw", blobs, descriptors)  # (B, D, g, g)
            blobs = torch.cat([blobs, painted], dim=1)
        return self.body(self.blobs_in(blobs) + self.background) + 0.5


class VideoBackbone(nn.Module):
    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.cfg = cfg
        P, C, Q = cfg.num_patches, cfg.dim, cfg.horizon * cfg.tokens_per_step
        if cfg.stem == "conv":
            self.stem = ConvStem(cfg)
        else:
            self.patch_embed = nn.Linear(6 * cfg.patch_size**2, C)
        if cfg.keypoints:
            self.to_keypoint_maps = nn.Conv2d(cfg.stem_channels, cfg.keypoints, 1)
            self.spatial_softmax = SpatialSoftmax()
            self.keypoint_embed = nn.Sequential(
                nn.Linear(cfg.keypoints * (2 + cfg.keypoint_descriptor), 4 * C),
                nn.GELU(),
                nn.Linear(4 * C, C),
            )  # an MLP, so the decoder reads offsets between keypoints (hand to object), not only each one
            self.keypoint_decoder = KeypointDecoder(cfg)  # pretraining's keypoint loss; unused after
            if cfg.keypoint_descriptor:
                self.to_descriptor = nn.Linear(cfg.stem_channels, cfg.keypoint_descriptor)
            if cfg.keypoint_forecast:
                self.keypoint_forecaster = nn.Sequential(
                    nn.Linear(cfg.keypoints * (2 + cfg.keypoint_descriptor) + C, 512), nn.GELU(),
                    nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 2 * cfg.keypoints),
                )  # fmt: skip
        if cfg.change_map:
            self.change_head = FiLMHeatmaps(cfg.stem_channels, C, 1)  # pretraining's change map; unused after
        self.word_embed = nn.EmbeddingBag(cfg.vocab_size, C, mode="mean", padding_idx=0)
        self.queries = nn.Parameter(torch.randn(1, Q, C) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, P + 1 + Q, C) * 0.02)
        # Spatial-only blocks over one "frame" of tokens: a plain bidirectional transformer.
        self.blocks = nn.ModuleList(
            SpaceTimeBlock(C, cfg.heads, cfg.mlp_ratio, temporal=False) for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(C)
        self.to_pixels = nn.Linear(C, 3 * cfg.patch_size**2)
        nn.init.zeros_(self.to_pixels.weight)  # start as "nothing changes"
        nn.init.zeros_(self.to_pixels.bias)
        if cfg.latent_dim:  # continuous latents: regressed, and embedded as they are predicted
            self.to_latents = nn.Linear(C, cfg.latent_dim)
            self.code_embed = nn.Linear(cfg.tokens_per_step * cfg.latent_dim, C)
        else:
            self.to_logits = nn.Linear(C, cfg.num_codes)
            self.code_embed = nn.Linear(cfg.tokens_per_step * cfg.num_codes, C)  # expected codes -> a token

    def check_inputs(self, frames: torch.Tensor, words: torch.Tensor) -> None:
        size = self.cfg.image_size
        if frames.ndim != 5 or frames.shape[1:3] != (2, 3):
            raise ValueError(f"frames must be (B, 2, 3, H, W): frames t-1 and t; got {tuple(frames.shape)}")
        if frames.shape[-2:] != (size, size):
            raise ValueError(
                f"frames are {frames.shape[-2]}x{frames.shape[-1]}, the backbone takes {size}x{size}"
            )
        if words.ndim != 2 or len(words) != len(frames):
            raise ValueError(f"words must be (B, W) token ids for B={len(frames)}; got {tuple(words.shape)}")

    def forward(self, frames: torch.Tensor, words: torch.Tensor) -> BackboneOutput:
        """frames (B, 2, 3, H, W) in [0, 1] (t-1, t), words (B, W) hashed word ids (0 = padding)."""
        self.check_inputs(frames, words)
        cfg, B = self.cfg, len(frames)
        now = frames[:, 1]
        diff = now - frames[:, 0] if cfg.frame_difference else torch.zeros_like(now)
        x = torch.cat([now * 2 - 1, 4 * diff], dim=1)  # (B, 6, H, W); differences are small
        keypoints = descriptors = fmap = None
        if cfg.stem == "conv":
            patches, fmap = self.stem(x)  # (B, P, C), (B, c, H/s, W/s)
            if cfg.keypoints:
                keypoints, descriptors = self.locate(fmap)
        else:
            patches = self.patch_embed(patchify(x[:, None], cfg.patch_size)[:, 0])  # (B, P, C)
        instruction = self.word_embed(words)[:, None]  # (B, 1, C)
        x = torch.cat([patches, instruction, self.queries.expand(B, -1, -1)], dim=1) + self.pos
        x = x[:, None]  # SpaceTimeBlock works on (B, T, L, C); here T = 1
        for block in self.blocks:
            x = block(x)
        hidden = self.norm(x[:, 0])  # (B, L, C)
        P = cfg.num_patches
        change = unpatchify(self.to_pixels(hidden[:, None, :P]), cfg.patch_size, cfg.image_size)[:, 0]
        queries = hidden[:, P + 1 :].view(B, cfg.horizon, cfg.tokens_per_step, cfg.dim)
        if cfg.latent_dim:
            return BackboneOutput(
                hidden, now + change, None, keypoints, descriptors, fmap, self.to_latents(queries)
            )
        logits = self.to_logits(queries)  # (B, H, N, K)
        return BackboneOutput(hidden, now + change, logits, keypoints, descriptors, fmap)

    def locate(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The stem's map (B, c, h, w) -> keypoints (B, 2K) and their descriptors (B, K, D) or None."""
        maps = self.to_keypoint_maps(fmap)  # (B, K, h, w)
        keypoints = self.spatial_softmax(maps)
        if not self.cfg.keypoint_descriptor:
            return keypoints, None
        where = maps.flatten(2).softmax(-1)  # (B, K, h*w)
        return keypoints, self.to_descriptor(where @ fmap.flatten(2).transpose(1, 2))

    def keypoints_of(self, frame: torch.Tensor) -> torch.Tensor:
        """(B, 2K) keypoints of a single frame (B, 3, H, W) in [0, 1], seen without motion."""
        x = torch.cat([frame * 2 - 1, torch.zeros_like(frame)], dim=1)
        return self.locate(self.stem(x)[1])[0]

    def forecast_keypoints(self, out: BackboneOutput, words: torch.Tensor) -> torch.Tensor:
        """(B, 2K): frame t+H's keypoints forecast from frame t's (with descriptors) and the instruction."""
        return self.keypoint_forecaster(torch.cat([keypoint_vector(out), self.word_embed(words)], dim=1))

    def change_logits(self, out: BackboneOutput, words: torch.Tensor) -> torch.Tensor:
        """(B, h, w) logits over the stem's map of where frame t+H will differ from frame t."""
        return self.change_head(out.fmap, self.word_embed(words))[:, 0]

    def features(self, out: BackboneOutput) -> torch.Tensor:
        """Context for the action decoder: (B, cfg.num_context_tokens, C)."""
        cfg, B, C = self.cfg, len(out.hidden), self.cfg.dim
        P, g = cfg.num_patches, cfg.grid
        grid = out.hidden[:, :P].transpose(1, 2).reshape(B, C, g, g)
        pooled = F.avg_pool2d(grid, cfg.pool).flatten(2).transpose(1, 2)  # (B, (g/pool)^2, C)
        steps = out.hidden[:, P + 1 :].view(B, cfg.horizon, cfg.tokens_per_step, C).mean(2)  # (B, H, C)
        predicted = out.latents if out.logits is None else out.logits.softmax(-1)  # expected codes
        expected = self.code_embed(predicted.flatten(2))  # (B, H, C): the predicted latent actions
        tokens = [pooled, out.hidden[:, P : P + 1], steps + expected]
        if out.keypoints is not None:
            tokens.append(self.keypoint_embed(keypoint_vector(out))[:, None])  # (B, 1, C)
        return torch.cat(tokens, dim=1)


def keypoint_vector(out: BackboneOutput) -> torch.Tensor:
    """(B, 2K) keypoints, or (B, K * (2 + D)) with their descriptors: where things are (and what they look like)."""
    if out.descriptors is None:
        return out.keypoints
    return torch.cat([out.keypoints, out.descriptors.flatten(1)], dim=1)


def change_target(now: torch.Tensor, future: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames t and t+H (B, 3, H, W) -> where they differ as a distribution over a size x size map (B,
    size * size), and (B,) whether anything changed at all (a still frame has no target)."""
    change = F.adaptive_avg_pool2d((future - now).abs().mean(1, keepdim=True), size).flatten(1)
    total = change.sum(-1, keepdim=True)
    return change / total.clamp_min(1e-8), total[:, 0] > 1e-3 * size * size


def latent_action_loss(out: BackboneOutput, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """The latent-action terms: codes (B, H, N) with -1 where no label exists -> cross-entropy and top-1
    accuracy; continuous latents (B, H, N, D), standardized, NaN where no label exists -> MSE."""
    if out.latents is not None:
        if targets.shape != out.latents.shape:
            raise ValueError(
                f"continuous latent targets {tuple(targets.shape)} do not match the predictions "
                f"{tuple(out.latents.shape)} (B, horizon, tokens_per_step, latent_dim)"
            )
        valid = ~targets[..., 0, 0].isnan()  # (B, H): a transition is labelled whole or not at all
        if not valid.any():
            return {"action_mse": out.latents.sum() * 0}
        return {"action_mse": F.mse_loss(out.latents[valid], targets[valid])}
    valid = targets >= 0
    if not valid.any():  # a batch entirely past episode ends: nothing to score
        zero = out.logits.sum() * 0
        return {"action_ce": zero, "action_acc": zero}
    logits, codes = out.logits[valid], targets[valid]
    return {
        "action_ce": F.cross_entropy(logits, codes),
        "action_acc": (logits.argmax(-1) == codes).float().mean(),
    }


def backbone_loss(
    out: BackboneOutput,
    future: torch.Tensor,
    codes: torch.Tensor,
    frame_weight: float,
    action_weight: float,
    drawn: torch.Tensor | None = None,
    now: torch.Tensor | None = None,
    keypoint_weight: float = 0.0,
    keypoint_detail: float = 0.0,
    forecast: tuple[torch.Tensor, torch.Tensor] | None = None,
    forecast_weight: float = 0.0,
    change: torch.Tensor | None = None,
    change_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """future (B, 3, H, W) in [0, 1]; codes (B, H, N) with -1 where no label exists (past an episode's end
    or a video without latent actions), or continuous latents (`latent_action_loss`); `drawn` the keypoint
    decoder's frame t, scored against `now`, each pixel weighted by `detail_weights(now, keypoint_detail)`;
    `forecast` (predicted, actual) keypoints
    of frame t+H, the actual ones a fixed target (no gradient); `change` the change map's logits (B, h, w),
    scored against where frame t+H differs from `now` (`change_target`).

    Returns the weighted loss and its terms (unweighted), with the top-1 accuracy of code predictions.
    """
    frame = F.mse_loss(out.frame, future)
    terms = {"frame_mse": frame} | latent_action_loss(out, codes)
    action = terms["action_mse"] if out.latents is not None else terms["action_ce"]
    loss = frame_weight * frame + action_weight * action
    if drawn is not None:
        weights = detail_weights(now, keypoint_detail)
        terms["keypoint_mse"] = F.mse_loss(drawn, now)
        weighted = ((drawn - now) ** 2 * weights).mean() / weights.mean()
        loss = loss + keypoint_weight * weighted
    if forecast is not None:
        predicted, actual = forecast
        terms["forecast_mse"] = F.mse_loss(predicted, actual.detach())
        loss = loss + forecast_weight * terms["forecast_mse"]
    if change is not None:
        target, moved = change_target(now, future, change.shape[-1])
        terms["change_ce"] = (
            heatmap_cross_entropy(change[moved], target[moved]) if moved.any() else change.sum() * 0
        )
        loss = loss + change_weight * terms["change_ce"]
    return loss, terms


def detail_weights(frame: torch.Tensor, strength: float, size: int = 9) -> torch.Tensor:
    """(B, 1, H, W) per-pixel loss weights 1 + strength x |frame - its local mean|: a 5-pixel object on a
    plain table weighs little in a plain MSE (the arm and the big targets win the keypoints); its contrast
    with its surroundings brings it back."""
    local = F.avg_pool2d(frame, size, stride=1, padding=size // 2, count_include_pad=False)
    return 1 + strength * (frame - local).abs().mean(1, keepdim=True)


def backbone_config_of(path: str | Path) -> dict:
    """The config of the pretrained backbone in a run folder or its checkpoint folder (no weights read)."""
    return BackboneConfig(**read_trained_meta(path, "backbone")["model_config"]).to_dict()


def load_backbone(path: str | Path) -> VideoBackbone:
    """A pretrained backbone from a run folder or its checkpoint folder, in eval mode."""
    modules, _ = load_trained(
        path, "backbone", lambda config: {"model": VideoBackbone(BackboneConfig(**config))}
    )
    return modules["model"]
