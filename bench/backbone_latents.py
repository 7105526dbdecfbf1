"""How well a pretrained backbone predicts a continuous LAM's latent actions, step by step of its horizon,
on its own held-out video episodes, beside how predictable the latents are from the previous ones.

    python -m bench.backbone_latents outputs/lam_exp/run_cont_s3/backbone/ours_latent
    python -m bench.backbone_latents RUN --out reports/.../backbone_latents.json
    python -m bench.backbone_latents outputs/lam_exp/run_idm25/backbone/ours_idm --demos outputs/datasets/demos

The run's config.yaml names the video, its labels and the held-out split, so the score is on the episodes the
backbone never trained on. R^2 is against the held-out latents' own mean, per horizon step k (the latent
action of t+k-1 from frames t-1, t and the instruction). The persistence reference is the R^2 of a least-squares
fit of each labelled latent from the one `lag` frames before it in the same episode (all labelled frames): what
a reader of the current motion could say about the next. `by_group` splits the held-out frames by embodiment
(robot, hand) and kind (task: one of the suite's instructions; play: wandering, waving, pushing things about),
each group's R^2 against its own mean: play is motion no frame foretells. With `--demos`, for a backbone
whose labels are an inverse dynamics model's pseudo-actions (`ours_idm`), its predictions are also read as
an action chunk on demos it never saw (`demo_chunk_skill`, as `bench.heldout_demos` scores a policy's): what
the video taught about acting before any finetuning, on the whole demo and split at the release of the object
(before: reach, grasp, carry; after: retreat and hold).
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file

from bench.common import stamp, write_report
from bench.lam import apply_ridge, fit_ridge
from data.chunks import EpisodeBank, split_episodes
from data.clips import episode_columns
from data.dataset import load_metadata
from data.generate import PLAY_INSTRUCTIONS
from policies.train_policy import CONSTANT_MSE_FLOOR, chunk_skill, held_out_rows
from world_model.backbone.model import VideoBackbone, load_backbone
from world_model.backbone.train import EMBODIMENTS, label_statistics, load_labelled_video, make_batch

PLAY_PREFIXES = tuple(template.split("{")[0] for template in PLAY_INSTRUCTIONS.values())


def r2_by_step(predicted: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """predicted, targets (B, H, N, D), targets NaN where unlabelled -> R^2 of each of the H steps against
    the targets' mean at that step."""
    scores = []
    for k in range(targets.shape[1]):
        valid = ~targets[:, k, 0, 0].isnan()
        p, t = predicted[valid, k], targets[valid, k]
        scores.append(float(1 - (p - t).pow(2).mean() / (t - t.mean(0)).pow(2).mean()))
    return scores


def group_names(embodiment: torch.Tensor, tasks: list[str]) -> list[str]:
    """(B,) embodiment ids and B instructions -> "<embodiment>_<task|play>" per row."""
    names = {v: k for k, v in EMBODIMENTS.items()}
    kinds = ["play" if task.startswith(PLAY_PREFIXES) else "task" for task in tasks]
    return [f"{names[int(e)]}_{kind}" for e, kind in zip(embodiment.tolist(), kinds, strict=True)]


def embodiment_of(dataset: str | Path, episode_index: torch.Tensor) -> torch.Tensor:
    """(B,) episode ids -> (B,) embodiment ids; a dataset without that column (the demos) is the robot's."""
    if "embodiment" not in load_metadata(dataset).features:
        return torch.full((len(episode_index),), EMBODIMENTS["robot"])
    table = episode_columns(dataset, ["embodiment"])
    of_episode = dict(
        zip(table["episode_index"].tolist(), table["embodiment"].reshape(-1).tolist(), strict=True)
    )
    return torch.tensor([of_episode[int(e)] for e in episode_index])


def r2_by_group(predicted: torch.Tensor, targets: torch.Tensor, groups: list[str]) -> dict:
    """R^2 at the horizon's first step and averaged over its steps, within each group of rows."""
    out = {}
    for name in sorted(set(groups)):
        rows = torch.tensor([g == name for g in groups])
        steps = r2_by_step(predicted[rows], targets[rows])
        out[name] = {
            "r2_step_1": round(steps[0], 4),
            "r2_mean_over_steps": round(sum(steps) / len(steps), 4),
            "frames": int(rows.sum()),
        }
    return out


def persistence_r2(latents: torch.Tensor, episode_index: torch.Tensor, lag: int) -> float:
    """(F, N, D) latents (NaN unlabelled) -> R^2 of a linear fit of each one from the one `lag` frames before."""
    z = latents.flatten(1)
    labelled = ~z[:, 0].isnan()
    pair = labelled[:-lag] & labelled[lag:] & (episode_index[:-lag] == episode_index[lag:])
    before, after = z[:-lag][pair].numpy(), z[lag:][pair].numpy()
    fit = apply_ridge(fit_ridge(before, after), before)
    return float(1 - ((fit - after) ** 2).mean() / ((after - after.mean(0)) ** 2).mean())


@torch.no_grad()
def score(
    run: Path,
    demos: Path | None = None,
    first_held_out: int = 150,
    max_frames: int = 2048,
    batch_size: int = 256,
) -> dict:
    cfg = OmegaConf.load(run / "config.yaml")
    tcfg = cfg.train.backbone
    model = load_backbone(run)
    if not model.cfg.latent_dim:
        raise ValueError(f"the backbone in {run} predicts codes, not continuous latents (latent_dim 0)")
    bank, _ = load_labelled_video(tcfg.dataset, tcfg.labels, cfg.task.image_key, tcfg.embodiment)
    _, val_eps = split_episodes(len(bank.episodes), tcfg.val_fraction, tcfg.seed)
    val = bank.subset([bank.episodes[i] for i in val_eps])
    rows = torch.linspace(0, len(val) - 1, min(max_frames, len(val))).round().long()
    predicted, targets = [], []
    for chunk in rows.split(batch_size):
        frames, words, _, latents = make_batch(val, chunk, model.cfg.horizon, model.cfg.vocab_size, shift=0)
        predicted.append(model(frames, words).latents)
        targets.append(latents)
    predicted, targets = torch.cat(predicted), torch.cat(targets)
    steps = r2_by_step(predicted, targets)
    groups = group_names(embodiment_of(tcfg.dataset, val.episode_index[rows]), [val.tasks[r] for r in rows])
    latents = bank.columns["latents"]
    scores = {
        "r2_by_step": [round(r, 4) for r in steps],
        "r2_mean_over_steps": round(sum(steps) / len(steps), 4),
        "persistence_r2": {
            f"lag_{lag}": round(persistence_r2(latents, bank.episode_index, lag), 4) for lag in (1, 3)
        },
        "by_group": r2_by_group(predicted, targets, groups),
        "heldout_episodes": len(val_eps),
        "heldout_frames_scored": len(rows),
        "labels": str(tcfg.labels),
        "run": str(run),
    }
    if demos is not None:  # pseudo-actions: the same predictions read as an action chunk on unseen demos
        scores |= demo_chunk_skill(model, Path(tcfg.labels), demos, cfg.task.image_key, first_held_out)
    return scores


@torch.no_grad()
def demo_chunk_skill(
    model: VideoBackbone,
    labels: Path,
    demos: Path,
    image_key: str,
    first_held_out: int,
    frames: int = 512,
    steps: int = 7,
) -> dict:
    """The backbone's predicted pseudo-actions of the next `steps` steps as an action chunk, on frames of the
    demos from `first_held_out` on: chunk skill (1 - error / the demos' mean action's, averaged over the
    dimensions that vary; bench.heldout_demos' frames and measure). Refuses labels that are not actions."""
    with safe_open(labels, "pt") as f:
        config = json.loads((f.metadata() or {}).get("model_config", "{}"))
    if "action_dim" not in config or config.get("frame_stride") != 1:
        raise ValueError(
            f"{labels} are not one-step pseudo-actions of an inverse dynamics model (world_model.idm.label with "
            f"frame_stride 1; its model_config: {config}): the backbone's predictions are not actions"
        )
    mean, std = label_statistics(load_file(labels)["latents"])
    bank = EpisodeBank.load(demos, image_key, ["action"])
    if not 0 < first_held_out < len(bank.episodes):
        raise ValueError(f"first_held_out must be in 1..{len(bank.episodes) - 1}, got {first_held_out}")
    held = bank.subset(bank.episodes[first_held_out:])
    held.columns["latents"] = held.columns["action"][:, None]  # (F, 1, A): make_batch chunks the actions
    rows = held_out_rows(held, frames, seed=0)
    x, words, _, actions = make_batch(held, rows, model.cfg.horizon, model.cfg.vocab_size, shift=0)
    predicted = (model(x, words).latents * std + mean)[:, :steps, 0]  # (B, steps, A) in the demos' units
    actions = actions[:, :steps, 0]
    scale = bank.columns["action"].std(0).clamp_min(1e-3)  # as the policy's normalizer
    centre = bank.columns["action"].mean(0)
    released = after_release(held.columns["action"], held.episode_index)[rows]
    whole = skill_against_mean(predicted, actions, scale, centre)
    return {
        "demo_chunk_skill": whole["skill"],
        "demo_chunk_skill_per_dim": whole["per_dim"],
        "demo_chunk_skill_by_phase": {
            "before_release": skill_against_mean(predicted[~released], actions[~released], scale, centre),
            "after_release": skill_against_mean(predicted[released], actions[released], scale, centre),
        },
        "demo_frames": len(rows),
        "demo_steps": steps,
    }


def after_release(actions: torch.Tensor, episode_index: torch.Tensor) -> torch.Tensor:
    """(F, A) demo labels (last: the gripper, 1 closed) -> (F,) True from the step after each demo's last
    closed-gripper command on: the retreat and hold, which the video's task attempts show only when
    generated with data.video.full_horizon (by default they stop 3 steps into the retreat)."""
    closed = actions[:, -1] > 0.5
    released = torch.zeros(len(actions), dtype=torch.bool)
    for episode in episode_index.unique():
        rows = torch.nonzero(episode_index == episode).flatten()
        last_closed = torch.nonzero(closed[rows]).flatten()
        if len(last_closed):
            released[rows[last_closed[-1] + 1 :]] = True
    return released


def skill_against_mean(predicted: torch.Tensor, actions: torch.Tensor, scale, centre) -> dict:
    """(B, n, A) chunks (actions NaN past the episode's end) -> chunk skill against the demos' mean action
    `centre`, errors in units of `scale`; per dimension None where the mean action is already right."""
    valid = ~actions[..., 0].isnan()
    mse = ((predicted - actions) / scale).pow(2)[valid].mean(0)
    constant = ((actions - centre) / scale).pow(2)[valid].mean(0)
    return {
        "skill": round(chunk_skill(mse, constant), 4),
        "per_dim": [
            round(float(1 - e / c), 4) if c > CONSTANT_MSE_FLOOR else None
            for e, c in zip(mse, constant, strict=True)
        ],
        "frames": len(predicted),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a backbone run folder trained on continuous latents")
    parser.add_argument("--out", type=Path, help="write the scores there as JSON too")
    parser.add_argument(
        "--demos", type=Path, help="with pseudo-action labels: score the chunk on these demos"
    )
    parser.add_argument("--first-held-out", type=int, default=150, help="demos from this one on are scored")
    args = parser.parse_args()
    result = score(args.run, args.demos, args.first_held_out)
    result |= stamp("python -m bench.backbone_latents " + " ".join(sys.argv[1:]))
    print(json.dumps(result, indent=1))
    if args.out:
        write_report(args.out, result)


if __name__ == "__main__":
    main()
