"""LeRobot baseline: LeRobot's ACT trained by LeRobot's own trainer on our demos, run by sim.evaluate.

Training goes through `lerobot.scripts.lerobot_train.train` (what `lerobot-train` runs) with a
`TrainPipelineConfig` built here, in this process. The policy sees the camera and the robot state
only: `observation.environment_state` (object poses) is privileged and left out of its inputs.

    from policies.lerobot_baseline import train_act
    path = train_act("outputs/datasets/demos", "outputs/act", steps=20_000)
    # -> outputs/act/checkpoints/last/pretrained_model (weights, config, processors with their stats)

Evaluate it with a node under `policies:` (conf/entry/policies.yaml) (or the same as `+policies.act={...}`
on the `python -m sim.evaluate` command line):

    act:
      _target_: policies.lerobot_baseline.load_lerobot_policy
      _partial_: true
      path: outputs/act/checkpoints/last/pretrained_model

Needs lerobot's training extra (`accelerate`) on top of `lerobot[dataset]`. On a CPU shared with
another job, OMP_NUM_THREADS=1 trains several times faster than two threads that wait on each other.
"""

# First: data sets HF_HUB_OFFLINE, which huggingface_hub reads once, when lerobot imports it.
import data  # noqa: F401

# isort: split
import contextlib
import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from lerobot.configs.default import DatasetConfig
from lerobot.configs.train import TrainPipelineConfig
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.policies.act.configuration_act import ACTConfig
from lerobot.utils.feature_utils import dataset_to_policy_features

from data.dataset import check_videos, load_metadata
from policies.runner import ProcessedPolicy, missing_files

IMAGE_KEY = "observation.images.image"
STATE_KEY = "observation.state"
ACTION_KEY = "action"
# Object poses from the simulator: the scripted experts and probes may read them, a learned policy may not.
PRIVILEGED_KEYS = ("observation.environment_state",)


def policy_features(features: dict) -> tuple[dict[str, PolicyFeature], dict[str, PolicyFeature]]:
    """(inputs, outputs) as lerobot's make_policy would derive them from dataset features, less the
    privileged keys. make_policy only derives inputs when the config has none, so setting them here
    is what keeps environment_state out (the normalizer then also ignores it)."""
    all_features = dataset_to_policy_features(features)
    outputs = {k: f for k, f in all_features.items() if f.type is FeatureType.ACTION}
    inputs = {k: f for k, f in all_features.items() if k not in outputs and k not in PRIVILEGED_KEYS}
    return inputs, outputs


def act_config(
    features: dict,
    chunk_size: int = 14,
    n_action_steps: int = 7,
    device: str = "cpu",
    **overrides,
) -> ACTConfig:
    """ACT for our demos; `overrides` are any other ACTConfig fields (dim_model, n_encoder_layers, ...)."""
    inputs, outputs = policy_features(features)
    return ACTConfig(
        input_features=inputs,
        output_features=outputs,
        chunk_size=chunk_size,
        n_action_steps=n_action_steps,
        device=device,
        # Torchvision's ImageNet weights would be downloaded at run time: the ResNet starts from scratch.
        pretrained_backbone_weights=None,
        push_to_hub=False,
        **overrides,
    )


@contextlib.contextmanager
def _lerobot_process_state() -> Iterator[None]:
    """Shield the caller from lerobot's trainer, which is written as a program's main: its config
    validation reads `--policy.path` and the like from sys.argv, and it replaces the root logger's
    handlers (Hydra's log file among them)."""
    argv = sys.argv
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    sys.argv = [argv[0] if argv else "lerobot_train"]
    try:
        yield
    finally:
        sys.argv = argv
        root.handlers[:] = handlers
        root.setLevel(level)


@contextlib.contextmanager
def _cached_window_columns() -> Iterator[None]:
    """lerobot 0.6.1's reader fetches a key's delta-timestamp window (ACT's 14 future actions) with
    `hf_dataset[key][rows]`, which formats every column of those rows: each sample decodes 15 PNG frames
    to read one action chunk, a third of ACT's training step on this CPU (1.17 -> 0.77 s). While training,
    a window of a non-image key is read from that column, loaded once as a tensor: the same values
    (tests/policies/test_lerobot_baseline.py). Patched in this process only: with num_workers > 0 the
    loader's workers read as lerobot does."""
    from lerobot.datasets.dataset_reader import DatasetReader

    original = DatasetReader._query_hf_dataset

    def query(self, query_indices: dict[str, list[int]]) -> dict:
        columns = self.__dict__.setdefault("_window_columns", {})  # (id of the hf dataset, key) -> tensor
        result, rest = {}, {}
        for key, rows in query_indices.items():
            if key in self._meta.video_keys or self._meta.features[key]["dtype"] in ("image", "video"):
                rest[key] = rows
                continue
            if (id(self.hf_dataset), key) not in columns:
                columns[id(self.hf_dataset), key] = torch.stack(self.hf_dataset.select_columns([key])[:][key])
            if self._absolute_to_relative_idx is not None:
                rows = [self._absolute_to_relative_idx[i] for i in rows]
            result[key] = columns[id(self.hf_dataset), key][rows]
        return result | original(self, rest)

    DatasetReader._query_hf_dataset = query
    try:
        yield
    finally:
        DatasetReader._query_hf_dataset = original


def train_act(
    dataset_root: str | Path,
    out_dir: str | Path,
    steps: int,
    batch_size: int = 8,
    chunk_size: int = 14,
    n_action_steps: int = 7,
    seed: int = 0,
    device: str = "cpu",
    num_workers: int = 0,
    log_freq: int = 100,
    save_freq: int = 5_000,
    **policy_overrides,
) -> Path:
    """Train ACT on a local LeRobotDataset v3 with lerobot's trainer; returns the final pretrained_model dir.

    `out_dir` must not exist (lerobot overwrites nothing and this does not resume). `policy_overrides`
    are ACTConfig fields, e.g. dim_model=256, n_encoder_layers=2 for a smaller model.
    """
    # Imported here: the trainer module imports accelerate-dependent code and takes seconds to load,
    # which evaluation alone does not need.
    from lerobot.scripts.lerobot_train import train

    dataset_root, out_dir = Path(dataset_root), Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"training output {out_dir} already exists; delete it or pick another out_dir")
    meta = load_metadata(dataset_root, [IMAGE_KEY, STATE_KEY, ACTION_KEY])
    # A missing video would otherwise send LeRobotDataset to the hub for it.
    check_videos(meta, dataset_root)
    cfg = TrainPipelineConfig(
        dataset=DatasetConfig(
            repo_id=f"local/{dataset_root.name}",
            root=str(dataset_root),
            # torchcodec needs system FFmpeg libraries; PyAV ships its own (as data.dataset).
            video_backend="pyav",
            # ImageNet statistics only suit an ImageNet-pretrained backbone; ours starts from scratch.
            use_imagenet_stats=False,
        ),
        policy=act_config(meta.features, chunk_size, n_action_steps, device, **policy_overrides),
        output_dir=out_dir,
        job_name="act_baseline",
        seed=seed,
        num_workers=num_workers,
        batch_size=batch_size,
        steps=steps,
        log_freq=log_freq,
        save_freq=save_freq,
        env_eval_freq=0,  # no lerobot env: evaluation is sim.evaluate's job
    )
    with _lerobot_process_state(), _cached_window_columns():
        train(cfg)
    return out_dir / "checkpoints" / "last" / "pretrained_model"


def load_lerobot_policy(path: str | Path, task: str | None = None, device: str = "cpu") -> ProcessedPolicy:
    """Factory for sim.evaluate (`_partial_: true` with `path`): the trained policy with its saved
    processors, in the env's units; the harness passes `task`, which the policy does not need:
    instructions come with every batch."""
    return ProcessedPolicy.from_pretrained(path, device=device)


def _finished(out_dir: Path) -> Path | None:
    path = out_dir / "checkpoints" / "last" / "pretrained_model"
    return path if not missing_files(path) else None


def main() -> None:
    """python -m policies.lerobot_baseline [hydra overrides]: train ACT with cfg.lerobot_baseline, unless
    out_dir already holds a finished run (the pipeline reruns stages; lerobot's trainer does not resume)."""
    import hydra
    from omegaconf import OmegaConf

    @hydra.main(version_base="1.3", config_path="../conf", config_name="config")
    def run(cfg) -> None:
        bcfg = cfg.lerobot_baseline
        out_dir = Path(bcfg.out_dir)
        done = _finished(out_dir)
        if done is not None:
            print(f"ACT baseline already trained: {done}")
            return
        if out_dir.exists():  # a run that stopped before its checkpoint: lerobot's trainer cannot resume it
            print(f"ACT baseline: {out_dir} holds an unfinished run; training again from the start")
            shutil.rmtree(out_dir)
        overrides = OmegaConf.to_container(bcfg.policy, resolve=True)
        path = train_act(
            bcfg.dataset, out_dir, bcfg.steps, bcfg.batch_size, bcfg.chunk_size, bcfg.n_action_steps,
            bcfg.seed, bcfg.device, log_freq=bcfg.log_freq, save_freq=bcfg.steps, **overrides,
        )  # fmt: skip
        print(f"policy: {path}")
        print("command: python -m policies.lerobot_baseline " + " ".join(sys.argv[1:]))

    run()


if __name__ == "__main__":
    main()
