"""Latent-action benchmark: train the CPU profile from scratch, then score it. Writes reports/bench/lam.json
and the picture reports/figures/lam_grid.png.

    python -m bench.lam                 # ~20 min here; needs python -m data.generate first
    python -m bench.lam bench_lam.retrain=false   # score the model already in bench_lam.out_dir

- psnr_pred / psnr_copy_last: the last frame of held-out video clips rolled out from the first frame
  and the latents (each step from the previous prediction), against copying the first frame;
  codebook_usage, perplexity: codes on those clips (absent for a continuous model: model.lam.quantizer=none).
- probe_r2_translation: a ridge probe from one transition's latents (N tokens x code_dim) to the true
  end-effector translation of that step, fitted on 70% of the labelled demo episodes, R^2 on the rest
  (averaged over x, y, z; each axis in probe_r2_translation_xyz, and along the camera's axes in
  probe_r2_translation_camera_right_up_back). probe_r2_translation_before_quantizer: the same probe on
  the inverse dynamics' latents before quantization (what the quantizer loses); *_mlp: a two-layer MLP
  probe instead of the ridge (what the latents hold that a linear map cannot read);
  probe_r2_translation_supervised_idm: the supervised reference, a small CNN trained with the true
  translations to read them off the same frame pairs, same split (what a reader of one transition gets
  with the labels: the probe's practical ceiling).
- feature_probe_rms_cm (with bench_lam.backbone): how well the backbone pretrained on the actionless
  video localizes the object to pick, the place and the hand: bench.localization's linear heatmap probe
  of its frozen conv-stem map, fitted on 70% of the demo episodes, RMS cm on the rest (and the same
  probe on a random-weight twin). `bench_lam.feature_probe_only=true` adds it to the existing report
  without retraining the LAM (it keeps its own command and commit there).
- transfer_agreement: hand clips and robot clips with the same end-effector motion (the hand's actions
  replayed on the robot, same scene); the hand's latents drive the decoder from the robot's first
  frame, the predicted robot clip is encoded again and the probe reads its motion. Agreement is the
  share of clips moving >= 3 cm whose predicted displacement lies within 60 degrees of the true one.
"""

import json
import shutil
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import sim  # noqa: F401  (sets MUJOCO_GL before mujoco loads)
from bench.common import save_figure, stamp, write_atomic
from data.camera import PinholeCamera
from data.chunks import Clips, EpisodeBank
from data.clips import episode_columns, flow_targets, load_episode_frames, to_uint8_hwc
from sim.env import TabletopEnv
from sim.experts import ExpertController, PlayController
from sim.tasks import get_task
from world_model.idm.model import transition_input, transition_network
from world_model.lam.label import encode_transitions
from world_model.lam.model import LatentActionModel, load_lam
from world_model.lam.quantize import code_stats
from world_model.lam.train import train
from world_model.metrics import psnr
from world_model.training.checkpoint import read_trained_meta

MIN_MOVE = 0.03  # m: clips that move less have no direction to agree on
MAX_ANGLE_DEG = 60.0


# ---------------------------------------------------------------------------------------------- video
@torch.no_grad()
def score_video(
    model: LatentActionModel, bank: Clips, embodiment: torch.Tensor, batch_size: int = 64
) -> dict:
    """PSNR of the predicted last frame vs copying the first, per embodiment; code usage and perplexity."""
    pred_db, copy_db, codes = [], [], []
    for chunk in torch.arange(len(bank)).split(batch_size):
        clips = bank.clips(chunk)
        out = model(clips)
        rollout = model.decode(clips[:, 0], out.latents)  # frame t+k from frame t and the latents alone
        pred_db.append(psnr(rollout[:, -1], clips[:, -1]))
        copy_db.append(psnr(clips[:, 0], clips[:, -1]))
        if out.codes is not None:  # continuous latents have none
            codes.append(out.codes.flatten())
    pred_db, copy_db = torch.cat(pred_db), torch.cat(copy_db)
    result = {
        "psnr_pred": pred_db.mean().item(),
        "psnr_copy_last": copy_db.mean().item(),
        "heldout_clips": len(bank),
    }
    for e, name in enumerate(("robot", "hand")):
        mask = embodiment == e
        result[f"psnr_pred_{name}"] = pred_db[mask].mean().item()
        result[f"psnr_copy_last_{name}"] = copy_db[mask].mean().item()
    return result | code_stats(torch.cat(codes) if codes else None, model.quantizer.num_codes)


# ---------------------------------------------------------------------------------------------- probe
def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float = 1e-2) -> np.ndarray:
    """Least squares with an L2 penalty and a bias column: returns W with y ~ [x, 1] @ W."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    reg = alpha * np.eye(xb.shape[1])
    reg[-1, -1] = 0
    return np.linalg.solve(xb.T @ xb + reg, xb.T @ y)


def apply_ridge(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.hstack([x, np.ones((len(x), 1))]) @ w


def r2_per_axis(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """R^2 of each output dimension."""
    return 1 - ((y - pred) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)


def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    """R^2 per output dimension, averaged (scikit-learn's uniform average)."""
    return float(np.mean(r2_per_axis(y, pred)))


def mlp_probe_r2(
    x: np.ndarray, y: np.ndarray, fit: np.ndarray, steps: int = 3000, seed: int = 0
) -> np.ndarray:
    """R^2 per output of a two-layer MLP fitted to the `fit` rows of (x, y), scored on the others: what
    the features hold that a linear map cannot read (an NSVQ code's vector is a category, not a coordinate)."""
    torch.manual_seed(seed)
    mean, std, scale = x[fit].mean(0), x[fit].std(0) + 1e-6, y[fit].std(0)
    inputs = torch.tensor((x - mean) / std, dtype=torch.float32)
    targets = torch.tensor(y / scale, dtype=torch.float32)
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
        torch.nn.Linear(256, y.shape[1]),
    )  # fmt: skip
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    rows = torch.from_numpy(np.flatnonzero(fit))
    for _ in range(steps):
        batch = rows[torch.randint(len(rows), (256,))]
        loss = (net(inputs[batch]) - targets[batch]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        pred = net(inputs[torch.from_numpy(~fit)]).numpy() * scale
    return r2_per_axis(y[~fit], pred)


def supervised_idm_r2(
    before: torch.Tensor, after: torch.Tensor, y: np.ndarray, fit: np.ndarray, steps: int, seed: int = 0
) -> np.ndarray:
    """The probe's supervised reference: R^2 per axis of a small CNN trained, with the true translations
    y (M, 3), to read a transition's translation off its two frames (M, 3, H, W) uint8, on the `fit` rows,
    scored on the others. What a reader trained with the labels gets from one transition at this
    resolution and camera (a lower bound on what the frames hold), to set the LAM's probe against."""
    torch.manual_seed(seed)
    scale = torch.tensor(y[fit].std(0), dtype=torch.float32)
    targets = torch.tensor(y, dtype=torch.float32) / scale
    net = transition_network(before.shape[-1], y.shape[1])  # the inverse dynamics model's network

    def inputs(rows: torch.Tensor) -> torch.Tensor:
        return transition_input(before[rows].float() / 255, after[rows].float() / 255)

    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    rows = torch.from_numpy(np.flatnonzero(fit))
    for _ in range(steps):
        batch = rows[torch.randint(len(rows), (64,))]
        loss = (net(inputs(batch)) - targets[batch]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        scored = torch.from_numpy(np.flatnonzero(~fit))
        pred = torch.cat([net(inputs(chunk)) for chunk in scored.split(512)]) * scale
    return r2_per_axis(y[~fit], pred.numpy())


@torch.no_grad()
def transition_features(model: LatentActionModel, latents: torch.Tensor) -> np.ndarray:
    """(M, N, code_dim) latents before quantization -> (M, N * code_dim) quantized latents (the code's
    vector; the latents themselves for a continuous model), the probe's input."""
    if model.training:  # in training NSVQ adds noise and the codebooks record usage
        raise ValueError("transition_features needs the model in eval mode (load_lam returns it so)")
    return model.quantizer(latents).z_q.flatten(1).numpy()


def probe_translation(
    model: LatentActionModel,
    demos: Path,
    image_key: str,
    state_key: str,
    seed: int,
    exclude: tuple[int, ...] | list[int] = (),
    camera: PinholeCamera | None = None,
    idm_ceiling_steps: int = 0,
):
    """Fit the translation probe on labelled robot demos: returns (weights, R^2 on held-out episodes,
    details). The details add R^2 per axis (and with the camera's calibration, along its right, up and
    backward axes: a fixed camera sees the last only as a change of scale) and the same probe on the
    latents before quantization, which tells what the quantizer loses from what the inverse dynamics
    found. `exclude`: episodes the model was trained on with their actions (ours_lam_supervised), left
    out of fit and score. `idm_ceiling_steps` > 0: also the ceiling, supervised_idm_r2 on the same
    transitions and split."""
    frames = load_episode_frames(demos, image_key)
    excluded = set(exclude)
    frames = {ep: f for ep, f in frames.items() if ep not in excluded}
    cols = episode_columns(demos, [state_key])
    xs, xs_continuous, ys, eps, before, after = [], [], [], [], [], []
    for ep, ep_frames in frames.items():
        rows = cols["episode_index"] == ep
        xyz = cols[state_key][rows][np.argsort(cols["frame_index"][rows]), :3]
        _, latents = encode_transitions(model, ep_frames)
        k = model.cfg.frame_stride  # the last k frames have no transition
        xs.append(transition_features(model, latents[:-k]))
        xs_continuous.append(latents[:-k].flatten(1).numpy())
        ys.append(xyz[k:] - xyz[:-k])
        eps.append(np.full(len(latents) - k, ep))
        before.append(ep_frames[:-k])
        after.append(ep_frames[k:])
    x, y, ep_of = np.concatenate(xs), np.concatenate(ys), np.concatenate(eps)
    order = np.random.default_rng(seed).permutation(sorted(frames))
    fit = np.isin(ep_of, order[: int(0.7 * len(order))])
    w = fit_ridge(x[fit], y[fit])
    pred = apply_ridge(w, x[~fit])
    r2_axes = r2_per_axis(y[~fit], pred)
    mlp = float(mlp_probe_r2(x, y, fit, seed=seed).mean())
    if model.cfg.continuous:  # nothing is quantized: the probes before the quantizer are these
        r2_before, mlp_before = float(r2_axes.mean()), mlp
    else:
        x_continuous = np.concatenate(xs_continuous)
        w_continuous = fit_ridge(x_continuous[fit], y[fit])
        r2_before = r2_score(y[~fit], apply_ridge(w_continuous, x_continuous[~fit]))
        mlp_before = float(mlp_probe_r2(x_continuous, y, fit, seed=seed).mean())
    details = {
        "probe_r2_translation_xyz": [float(v) for v in r2_axes],
        "probe_r2_translation_before_quantizer": r2_before,
        "probe_r2_translation_mlp": mlp,
        "probe_r2_translation_mlp_before_quantizer": mlp_before,
        "probe_transitions": {"fit": int(fit.sum()), "scored": int((~fit).sum())},
    }
    if idm_ceiling_steps > 0:
        ceiling = supervised_idm_r2(torch.cat(before), torch.cat(after), y, fit, idm_ceiling_steps, seed)
        details["probe_r2_translation_supervised_idm"] = float(ceiling.mean())
        details["probe_r2_translation_supervised_idm_xyz"] = [float(v) for v in ceiling]
    if camera is not None:
        to_camera = camera.rotation.T  # a linear probe's answer turns with its target
        r2_camera = r2_per_axis(y[~fit] @ to_camera, pred @ to_camera)
        details["probe_r2_translation_camera_right_up_back"] = [float(v) for v in r2_camera]
    return w, float(r2_axes.mean()), details


# ---------------------------------------------------------------------------------------------- transfer
def paired_episodes(tasks: list[str], pairs: int, image_size: int, fps: int, seed: int):
    """Hand episodes (task attempts and wandering) and the same actions replayed on the robot in the
    same scene: yields (hand frames, robot frames, hand xyz, robot xyz) per pair."""
    rng = np.random.default_rng(seed)
    for i in range(pairs):
        task = tasks[i % len(tasks)]
        protocol = ("visual_matching", "variant_aggregation")[(i // len(tasks)) % 2]
        hand = TabletopEnv(task, protocol, image_size=image_size, robot="hand", control_hz=fps)
        robot = TabletopEnv(task, protocol, image_size=image_size, robot="widowx", control_hz=fps)
        ctrl_rng = np.random.default_rng(rng.integers(2**31))
        controller = (
            ExpertController(get_task(task), noise=0.01, rng=ctrl_rng)
            if i % 2 == 0
            else PlayController("wander", rng=ctrl_rng)
        )
        obs_h, _ = hand.reset(seed=seed + i)
        obs_r, _ = robot.reset(seed=seed + i)
        record = {k: [] for k in ("hand", "robot", "hand_xyz", "robot_xyz")}
        for _ in range(40):
            for key, obs in (("hand", obs_h), ("robot", obs_r)):
                record[key].append(obs["pixels"]["image"])
                record[f"{key}_xyz"].append(obs["agent_pos"][:3])
            action = controller.act(obs_h["agent_pos"], obs_h["environment_state"])
            obs_h, *_ = hand.step(action)
            obs_r, *_ = robot.step(action)
        hand.close()
        robot.close()
        frames = {k: torch.from_numpy(np.stack(record[k])).permute(0, 3, 1, 2) for k in ("hand", "robot")}
        yield frames["hand"], frames["robot"], np.stack(record["hand_xyz"]), np.stack(record["robot_xyz"])


@torch.no_grad()
def probe_displacement(
    model: LatentActionModel, w: np.ndarray, first: torch.Tensor, latents: torch.Tensor
) -> np.ndarray:
    """Decode a clip from `first` (B, 3, H, W) and latents, encode the prediction again, and sum the
    probe's per-step translations: (B, 3) predicted displacement over the clip."""
    predicted = model.decode(first, latents).clamp(0, 1)
    clip = torch.cat([first[:, None], predicted], dim=1)
    latents = model.idm(clip)  # (B, S, N, code_dim) before quantization
    steps = apply_ridge(w, transition_features(model, latents.flatten(0, 1)))
    return steps.reshape(len(first), -1, 3).sum(1)


def transfer(
    model: LatentActionModel, w: np.ndarray, tasks, image_size: int, fps: int, pairs: int, seed: int
) -> dict:
    T, k = model.cfg.clip_len, model.cfg.frame_stride
    span = (T - 1) * k  # steps from a clip's first frame to its last
    hand_pred, self_pred, true = [], [], []
    for hand, robot, hand_xyz, robot_xyz in paired_episodes(tasks, pairs, image_size, fps, seed):
        starts = torch.arange(0, len(hand) - span, span)
        idx = starts[:, None] + k * torch.arange(T)
        hand_clips, robot_clips = hand[idx].float() / 255, robot[idx].float() / 255
        first = robot_clips[:, 0]
        hand_pred.append(probe_displacement(model, w, first, model.encode(hand_clips).z_q))
        self_pred.append(probe_displacement(model, w, first, model.encode(robot_clips).z_q))
        true.append(robot_xyz[(starts + span).numpy()] - robot_xyz[starts.numpy()])
        assert np.abs(hand_xyz - robot_xyz).max() < 0.02, "replayed actions should move both hands alike"
    true = np.concatenate(true)
    moving = np.linalg.norm(true, axis=1) >= MIN_MOVE
    result = {"transfer_clips": int(moving.sum())}
    for name, pred in (
        ("transfer", np.concatenate(hand_pred)),
        ("transfer_robot_self", np.concatenate(self_pred)),
    ):
        cos = cosine(pred[moving], true[moving])
        result[f"{name}_agreement"] = float((cos >= np.cos(np.radians(MAX_ANGLE_DEG))).mean())
        result[f"{name}_mean_cosine"] = float(cos.mean())
    return result


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


# ---------------------------------------------------------------------------------------------- picture
@torch.no_grad()
def grid_figure(
    model: LatentActionModel, bank: Clips, embodiment: torch.Tensor, path: Path, per_embodiment: int = 3
):
    """Rows: held-out clips of each embodiment; columns: frame t, real t+k, predicted t+k, DIS flow of
    the real pair, DIS flow of the predicted pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for e in (0, 1):
        candidates = torch.nonzero(embodiment == e).flatten()
        motion = (bank.clips(candidates)[:, -1] - bank.clips(candidates)[:, 0]).abs().mean((1, 2, 3))
        rows += candidates[motion.argsort(descending=True)[: per_embodiment * 4 : 4]].tolist()  # moving clips
    clips = bank.clips(torch.tensor(rows))
    predicted = model.decode(clips[:, 0], model.encode(clips).z_q)[:, -1]
    first, last = clips[:, 0], clips[:, -1]
    flow_real = flow_targets(to_uint8_hwc(first), to_uint8_hwc(last))
    flow_pred = flow_targets(to_uint8_hwc(first), to_uint8_hwc(predicted))
    columns = ["frame t", "real t+k", "predicted t+k", "flow (real)", "flow (predicted)"]
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(2 * len(columns), 2 * len(rows)))
    for r in range(len(rows)):
        images = [
            to_uint8_hwc(first)[r],
            to_uint8_hwc(last)[r],
            to_uint8_hwc(predicted)[r],
            flow_image(flow_real[r]),
            flow_image(flow_pred[r]),
        ]
        for c, image in enumerate(images):
            ax = axes[r, c]
            ax.imshow(image)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=9)
            if c == 0:
                ax.set_ylabel("robot" if r < per_embodiment else "hand", fontsize=9)
    fig.suptitle(f"latent action model: held-out clips, k = {(bank.clip_len - 1) * bank.stride}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def flow_image(flow: np.ndarray, max_px: float = 4.0) -> np.ndarray:
    """(2, H, W) flow in pixels -> (H, W, 3) uint8: hue is direction, brightness is magnitude."""
    import matplotlib.colors

    dx, dy = flow
    hue = (np.arctan2(dy, dx) / (2 * np.pi)) % 1.0
    value = np.clip(np.hypot(dx, dy) / max_px, 0, 1)
    rgb = matplotlib.colors.hsv_to_rgb(np.stack([hue, np.ones_like(hue), value], axis=-1))
    return (rgb * 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- main
def heldout_bank(model: LatentActionModel, out_dir: Path, image_key: str):
    state = json.loads((out_dir / "checkpoints/last/state.json").read_text())
    episodes = state["val_episodes"]
    bank = Clips.of(
        EpisodeBank.load(state["dataset"], image_key, ["embodiment"], episodes),
        model.cfg.clip_len,
        model.cfg.frame_stride,
    )
    return bank, bank.bank.columns["embodiment"][bank.starts].reshape(-1).long()


def feature_probe(cfg: DictConfig) -> dict:
    """bench.localization's probe of the pretrained backbone in cfg.bench_lam.backbone (frozen) on the demos."""
    from bench.localization import run as localization

    backbone = Path(cfg.bench_lam.backbone)
    if not (backbone / "checkpoints" / "last" / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"bench_lam.backbone={backbone} holds no trained backbone (checkpoints/last/model.safetensors); "
            "train one with `make results` (outputs/results/backbone/ours) or python -m world_model.backbone.train"
        )
    demos = str(Path(cfg.data.root) / cfg.data.demos.name)
    camera = PinholeCamera.from_config(cfg.task.camera, cfg.task.image_size)
    args = (demos, [], 0, 0, 0.3, cfg.bench_lam.seed, str(backbone), cfg.bench_lam.probe_steps)
    probe = localization(*args, camera=camera)["feature_probe"]
    return {
        "feature_probe_rms_cm": probe["pretrained"],
        "feature_probe": probe | stamp("python -m bench.lam " + " ".join(sys.argv[1:])),
    }


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    torch.manual_seed(cfg.bench_lam.seed)
    if cfg.bench_lam.feature_probe_only:
        out = Path(cfg.bench_lam.out)
        result = json.loads(out.read_text()) | feature_probe(cfg)
        write_atomic(out, json.dumps(result, indent=1) + "\n")
        print(f"lam: feature_probe_rms_cm {result['feature_probe_rms_cm']} -> {out}")
        return
    out_dir = Path(cfg.bench_lam.out_dir)
    cfg.train.lam.out_dir = str(out_dir)
    training = None
    if cfg.bench_lam.retrain:
        shutil.rmtree(out_dir, ignore_errors=True)
        start = time.perf_counter()
        training = train(cfg)
        training["wall_minutes"] = (time.perf_counter() - start) / 60
    model = load_lam(out_dir)
    bank, embodiment = heldout_bank(model, out_dir, cfg.task.image_key)
    result = score_video(model, bank, embodiment)
    demos = Path(cfg.data.root) / cfg.data.demos.name
    supervised = read_trained_meta(out_dir, "latent-action").get("supervised_episodes", [])
    w, r2, probe_details = probe_translation(
        model,
        demos,
        cfg.task.image_key,
        cfg.task.state_key,
        cfg.bench_lam.seed,
        exclude=supervised,
        camera=PinholeCamera.from_config(cfg.task.camera, cfg.task.image_size) if cfg.task.camera else None,
        idm_ceiling_steps=cfg.bench_lam.idm_ceiling_steps,
    )
    result["probe_r2_translation"] = r2
    result["probe_excluded_supervised_episodes"] = supervised
    result |= probe_details
    result |= transfer(
        model,
        w,
        list(cfg.task.tasks),
        model.cfg.image_size,
        cfg.task.fps,
        cfg.bench_lam.transfer_pairs,
        cfg.bench_lam.seed,
    )
    if training is not None:
        result["train_minutes_cpu"] = training["minutes"]
        result["samples_per_s"] = training["samples_per_s"]
        result["train_wall_minutes_with_loading"] = training["wall_minutes"]
    grid_figure(model, bank, embodiment, Path(cfg.bench_lam.figure))
    if cfg.bench_lam.backbone:
        result |= feature_probe(cfg)
    targets = {"probe_r2_translation": 0.8, "codebook_usage": 0.75, "transfer_agreement": 0.8}
    if model.cfg.continuous:  # no codebook to use
        del targets["codebook_usage"]
    result["targets"] = targets
    result["meets_targets"] = {k: result[k] >= v for k, v in targets.items()} | {
        "psnr_pred_beats_copy": result["psnr_pred"] > result["psnr_copy_last"]
    }
    result["model"] = OmegaConf.to_container(cfg.model.lam, resolve=True)
    result["train"] = OmegaConf.to_container(cfg.train.lam, resolve=True)
    result |= stamp("python -m bench.lam " + " ".join(sys.argv[1:]))
    write_atomic(Path(cfg.bench_lam.out), json.dumps(result, indent=1) + "\n")
    codebook = (
        f"codebook_usage {result['codebook_usage']:.2f} (perplexity {result['perplexity']:.2f})"
        if "codebook_usage" in result
        else "continuous latents"
    )
    print(
        f"lam: probe_r2_translation {r2:.3f}, {codebook}, psnr_pred {result['psnr_pred']:.2f} vs copy {result['psnr_copy_last']:.2f} dB, "
        f"transfer_agreement {result['transfer_agreement']:.2f}, train {result.get('train_minutes_cpu', float('nan')):.1f} min "
        f"-> {cfg.bench_lam.out}"
    )


if __name__ == "__main__":
    main()
