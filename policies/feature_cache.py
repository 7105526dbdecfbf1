"""Backbone features computed once, for finetuning with a frozen backbone (`train.policy.feature_cache`).

A frozen backbone (model.policy.backbone_lr_scale=0) on unshifted frames (train.policy.shift=0) gives every
demo frame the same context tokens and stem map at every step, so the trainer reads them from this cache
instead of running the backbone: a step then costs the decoder and the waypoint maps only. The file
(safetensors) records the backbone's weights fingerprint and the demo rows it was computed for; a file made
for another backbone or other demos is refused, naming both sides, never silently recomputed or reused.

    python -m policies.train_policy model.policy.backbone_lr_scale=0 \\
        train.policy.feature_cache=outputs/policy_frozen/features.safetensors train.policy.out_dir=outputs/policy_frozen
"""

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from policies.vipra.modeling_vipra import CACHED_CONTEXT_KEY, CACHED_FMAP_KEY, VipraPolicy
from policies.vipra.processor_vipra import tokenize


def backbone_fingerprint(backbone: torch.nn.Module) -> str:
    """A hash of the backbone's weights (names, shapes and values): equal for the same weights only."""
    digest = hashlib.sha256()
    for name, tensor in sorted(backbone.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def check_cacheable(policy: VipraPolicy, shift: int) -> None:
    """The cache holds one set of features per frame: only a backbone that neither learns nor sees shifted
    frames gives those at every step."""
    if policy.backbone is None or policy.config.backbone_lr_scale != 0:
        raise ValueError(
            "train.policy.feature_cache needs a frozen pretrained backbone (train.policy.backbone set and "
            f"model.policy.backbone_lr_scale=0; got backbone_lr_scale={policy.config.backbone_lr_scale}"
            f"{', no backbone' if policy.backbone is None else ''}): a backbone that learns changes its features every step"
        )
    if shift:
        raise ValueError(
            f"train.policy.feature_cache needs train.policy.shift=0 (got {shift}): shifted frames give other "
            "features at every step"
        )


@dataclass
class FeatureCache:
    """Per frame row of the demo bank: context (F, N, C) and the stem's map (F, c, h, w), or None."""

    context: torch.Tensor
    fmap: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.context)

    def batch(self, rows: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        """The cached features of `rows`, under the keys VipraPolicy reads them from."""
        out = {CACHED_CONTEXT_KEY: self.context[rows].to(device)}
        if self.fmap is not None:
            out[CACHED_FMAP_KEY] = self.fmap[rows].to(device)
        return out


@torch.no_grad()
def compute_features(
    policy: VipraPolicy, rows: int, batch_of: Callable[[torch.Tensor], dict], chunk: int = 256
) -> FeatureCache:
    """Run the backbone once over rows 0..rows-1; `batch_of(rows)` gives their preprocessed batch."""
    context, fmaps = [], []
    for start in tqdm(range(0, rows, chunk), desc="feature cache", unit="chunk", leave=False):
        batch = batch_of(torch.arange(start, min(start + chunk, rows)))
        words = tokenize(list(batch["task"]), policy.backbone.cfg.vocab_size).to(
            next(policy.parameters()).device
        )
        c, f = policy.backbone_features(batch, words)
        context.append(c.cpu())
        fmaps.append(None if f is None else f.cpu())
    return FeatureCache(torch.cat(context), None if fmaps[0] is None else torch.cat(fmaps))


def load_or_compute(
    path: str | Path, policy: VipraPolicy, rows: int, batch_of: Callable, describe: dict[str, str]
) -> FeatureCache:
    """The cache at `path` if it was computed for this backbone and these demo rows (`describe`: what else
    identifies them, e.g. the dataset); otherwise a clear error. Computed and written when missing."""
    path = Path(path)
    expected = {"backbone": backbone_fingerprint(policy.backbone), "rows": str(rows)} | describe
    if path.exists():
        with safe_open(str(path), "pt") as f:
            found = f.metadata() or {}
        differs = [
            f"{k}: the file's {found.get(k)!r}, this run's {v!r}"
            for k, v in expected.items()
            if found.get(k) != v
        ]
        if differs:
            raise ValueError(
                f"{path} holds features computed for another run ({'; '.join(differs)}): point "
                "train.policy.feature_cache elsewhere, or delete the file to compute it for this run"
            )
        tensors = load_file(str(path))
        return FeatureCache(tensors["context"], tensors.get("fmap"))
    cache = compute_features(policy, rows, batch_of)
    tensors = {"context": cache.context.contiguous()}
    if cache.fmap is not None:
        tensors["fmap"] = cache.fmap.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata=expected)
    tmp.rename(path)
    return cache
