"""What the trained networks know, offline, on the demos: do the features say where the objects are,
and do the policies reproduce the demonstrated chunks? (The issue's "find out why" when pretraining
does not help.)

    python -m bench.probe_policy                           # policies and backbones of run_dir
    python -m bench.probe_policy 'probe_policy.policies=[ours,scratch_fm]'

- object_r2: ridge from the backbone's context tokens at frame t (flattened) to the source and target
  objects' x, y (privileged `observation.environment_state`), fit on 70% of the demo episodes and
  scored on the rest. For each policy's backbone, each pretrained backbone, and a random one.
- chunk_mse: mean squared error, in normalized units, of the first n_action_steps actions sampled
  (10 steps, fixed noise) against the demonstrated ones, on frames of the held-out 30% of episodes
  (which the policies did see in training: all 100 demos are training data), per action dimension
  (`chunk_mse_per_dim`) and over all of them.
- constant_mse_per_dim: the same error of the constant predictor (the demos' mean action) on the same
  frames. It is not 1 on every dimension: roll and pitch are constant in the demos (error ~0), so a
  policy is judged per dimension, by `chunk_skill` = 1 - its error / the constant's, over the dimensions
  the constant predictor does not already get right.
"""

import json
import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from bench.lam import apply_ridge, fit_ridge, r2_score
from data.chunks import EpisodeBank
from policies.train_policy import chunk_error_sums, chunk_skill, make_batch
from policies.vipra import make_policy
from policies.vipra.configuration_vipra import ACTION_KEY, STATE_KEY
from world_model.backbone.model import BackboneConfig, VideoBackbone, load_backbone, tokenize

ENV_KEY = "observation.environment_state"
OBJECT_XY = [0, 1, 4, 5]  # src_x, src_y, tgt_x, tgt_y


@torch.no_grad()
def context_features(backbone: VideoBackbone, bank: EpisodeBank, rows: torch.Tensor, batch: int = 256):
    out = []
    for chunk in rows.split(batch):
        w = bank.window(chunk, backbone.cfg.horizon)
        frames = bank.frames[w.context].float() / 255
        words = tokenize([bank.tasks[i] for i in chunk.tolist()], backbone.cfg.vocab_size)
        out.append(backbone.features(backbone(frames, words)).flatten(1))
    return torch.cat(out).numpy()


def object_r2(backbone: VideoBackbone, bank: EpisodeBank, fit: torch.Tensor, score: torch.Tensor) -> float:
    y = bank.columns[ENV_KEY][:, OBJECT_XY].numpy()
    w = fit_ridge(context_features(backbone, bank, fit), y[fit.numpy()], alpha=10.0)
    return r2_score(y[score.numpy()], apply_ridge(w, context_features(backbone, bank, score)))


@torch.no_grad()
def chunk_mse(policy, bank: EpisodeBank, rows: torch.Tensor, image_key: str | None, batch: int = 128):
    """Per action dimension, in the policy's normalized units over the first n_action_steps of each
    chunk: (the policy's squared error (A,), the constant predictor's (A,)). The constant predictor is
    the demos' mean action, 0 in these units."""
    n, H = policy.config.n_action_steps, policy.config.chunk_size
    sums = torch.zeros(2, policy.config.action_dim)
    count = 0
    for chunk in rows.split(batch):
        b = make_batch(bank, chunk, H, image_key, shift=0)  # image_key None: object poses, no frames
        noise = torch.randn(
            len(chunk), H, policy.config.action_dim, generator=torch.Generator().manual_seed(0)
        )
        target = policy.normalize(ACTION_KEY, b[ACTION_KEY][:, :n])
        sampled = policy.normalize(ACTION_KEY, policy.predict_action_chunk(b, noise=noise)[:, :n])
        error, constant, steps = chunk_error_sums(sampled, target, b["action_is_pad"][:, :n])
        sums[0] += error
        sums[1] += constant
        count += steps
    return sums[0] / count, sums[1] / count


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from bench.common import stamp, write_atomic

    pcfg, run_dir, key = cfg.probe_policy, Path(cfg.run_dir), cfg.task.image_key
    bank = EpisodeBank.load(
        f"{cfg.data.root}/{cfg.data.demos.name}", key, columns=[STATE_KEY, ACTION_KEY, ENV_KEY]
    )
    order = np.random.default_rng(pcfg.seed).permutation(bank.episodes)
    fit_eps = set(order[: int(0.7 * len(order))].tolist())
    in_fit = torch.tensor([int(e) in fit_eps for e in bank.episode_index.tolist()])
    fit, score = torch.nonzero(in_fit).flatten(), torch.nonzero(~in_fit).flatten()
    result = {"object_r2": {}, "chunk_mse": {}, "chunk_mse_per_dim": {}, "chunk_skill": {}}
    result |= {"fit_frames": len(fit), "scored_frames": len(score)}

    backbones = {}
    for name in pcfg.policies:
        path = run_dir / "policy" / name / "pretrained_model"
        if not (path / "model.safetensors").is_file():
            print(f"skipping {name}: no policy at {path}")
            continue
        policy = make_policy(path)
        backbone = policy.policy.backbone
        if backbone is not None:
            backbones[f"policy/{name}"] = backbone
        mse, constant = chunk_mse(policy, bank, score, key if backbone is not None else None)
        result["chunk_mse"][name] = float(mse.mean())
        result["chunk_mse_per_dim"][name] = mse.tolist()
        result["constant_mse_per_dim"] = constant.tolist()
        result["chunk_skill"][name] = chunk_skill(mse, constant)
        pretrained = run_dir / "backbone" / name
        if (pretrained / "checkpoints/last/model.safetensors").is_file():
            backbones[f"pretrained/{name}"] = load_backbone(pretrained)
    torch.manual_seed(pcfg.seed)
    first = next(iter(backbones.values()), None)
    backbones["random"] = VideoBackbone(first.cfg if first is not None else BackboneConfig()).eval()
    for name, backbone in backbones.items():
        result["object_r2"][name] = object_r2(backbone.eval(), bank, fit, score)
        print(f"{name}: object R^2 {result['object_r2'][name]:.3f}", flush=True)
    result |= stamp("python -m bench.probe_policy " + " ".join(sys.argv[1:]))
    write_atomic(Path(pcfg.out), json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
