"""A trained LeRobot-style policy with its saved pre/post-processors behind the harness's contract:
`reset()`, `select_action(batch) -> (B, A)` and `predict_action_chunk(batch) -> (B, H, A)`, taking
observations and returning actions in the dataset's units. The same for ours (type vipra) and for
LeRobot's own policies (the ACT baseline), loaded from a folder as lerobot-eval loads it.

    policy = ProcessedPolicy.from_pretrained("outputs/policy/pretrained_model")
    policy.reset(); action = policy.select_action(batch)
"""

import json
from pathlib import Path

import torch
from lerobot.configs.policies import PreTrainedConfig
from lerobot.configs.types import NormalizationMode
from lerobot.policies import make_pre_post_processors
from lerobot.policies.factory import get_policy_class
from lerobot.processor import NormalizerProcessorStep, UnnormalizerProcessorStep
from lerobot.utils.constants import POLICY_POSTPROCESSOR_DEFAULT_NAME, POLICY_PREPROCESSOR_DEFAULT_NAME

MODEL_FILES = ("config.json", "model.safetensors")
PROCESSOR_FILES = (f"{POLICY_PREPROCESSOR_DEFAULT_NAME}.json", f"{POLICY_POSTPROCESSOR_DEFAULT_NAME}.json")


def missing_files(path: Path) -> list[str]:
    """Files of a policy folder that are absent, the processors' statistics files included."""
    missing = [name for name in (*MODEL_FILES, *PROCESSOR_FILES) if not (path / name).is_file()]
    for name in PROCESSOR_FILES:
        if (path / name).is_file():
            steps = json.loads((path / name).read_text()).get("steps", [])
            missing += [
                s["state_file"]
                for s in steps
                if s.get("state_file") and not (path / s["state_file"]).is_file()
            ]
    return missing


def normalized_features(config, features: dict) -> list[str]:
    """The keys of `features` whose type the config maps to a normalization other than IDENTITY."""
    identity = NormalizationMode.IDENTITY
    return [
        k for k, f in features.items() if config.normalization_mapping.get(f.type.value, identity) != identity
    ]


def check_stats(pipeline, step_type: type, keys: list[str], path: Path) -> None:
    """LeRobot builds a normalizer with empty statistics, silently, when none were saved or passed;
    the policy would then see unnormalized inputs or return normalized actions."""
    steps = [s for s in pipeline.steps if isinstance(s, step_type)]
    if not steps:
        raise ValueError(f"{path}: the processor has no {step_type.__name__}")
    stats = steps[0].stats or {}
    empty = [k for k in keys if not stats.get(k)]
    if empty:
        raise ValueError(
            f"{path}: {step_type.__name__} has no statistics for {empty} (it has {sorted(stats)})"
        )


class ProcessedPolicy:
    """policy + preprocessor + postprocessor; only the policy's own input keys (and the instruction)
    reach it, so privileged observations never do."""

    def __init__(self, policy, preprocessor, postprocessor):
        self.policy, self.preprocessor, self.postprocessor = policy, preprocessor, postprocessor
        self.config = policy.config
        self.input_keys = list(self.config.input_features)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str = "cpu", config: PreTrainedConfig | None = None
    ) -> "ProcessedPolicy":
        """A policy folder as lerobot-train and the project's trainer write it; `config` (read from
        the folder by default) may carry overrides."""
        path = Path(path)
        missing = missing_files(path)
        if missing:
            raise FileNotFoundError(
                f"{path} is not a complete policy folder: missing {missing} (lerobot-train writes them under "
                "<out_dir>/checkpoints/<step>/pretrained_model, policies.train_policy under <out_dir>/pretrained_model)"
            )
        config = config or PreTrainedConfig.from_pretrained(path)
        config.device = device  # the saved device is the training one
        policy = get_policy_class(config.type).from_pretrained(path, config=config)
        preprocessor, postprocessor = make_pre_post_processors(
            config, pretrained_path=str(path), preprocessor_overrides={"device_processor": {"device": device}}
        )
        features = {**config.input_features, **config.output_features}
        check_stats(preprocessor, NormalizerProcessorStep, normalized_features(config, features), path)
        check_stats(
            postprocessor,
            UnnormalizerProcessorStep,
            normalized_features(config, config.output_features),
            path,
        )
        return cls(policy.eval(), preprocessor, postprocessor)

    def reset(self) -> None:
        self.policy.reset()  # empties the action queue (and ours forgets the previous frame)

    def _inputs(self, batch: dict) -> dict:
        missing = [k for k in self.input_keys if k not in batch]
        if missing:
            raise ValueError(
                f"the policy reads {self.input_keys}; the batch lacks {missing} (it has {sorted(batch)})"
            )
        obs = {k: batch[k] for k in self.input_keys}
        for key, x in obs.items():  # before the normalizer, whose broadcasting error would name neither side
            shape = tuple(self.config.input_features[key].shape)
            if torch.is_tensor(x) and tuple(x.shape[-len(shape) :]) != shape:
                raise ValueError(
                    f"{key!r} has shape {tuple(x.shape)}; the policy was trained on {shape} per frame"
                )
        if "task" in batch:
            obs["task"] = batch["task"]
        return self.preprocessor(obs)

    @torch.inference_mode()
    def select_action(self, batch: dict, **kwargs) -> torch.Tensor:
        """(B, A) in the dataset's units; kwargs go to the policy (ours: `noise`)."""
        return self.postprocessor(self.policy.select_action(self._inputs(batch), **kwargs))

    @torch.inference_mode()
    def predict_action_chunk(self, batch: dict, **kwargs) -> torch.Tensor:
        """(B, H, A) in the dataset's units, for the control loop."""
        return self.postprocessor(self.policy.predict_action_chunk(self._inputs(batch), **kwargs))

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """`x` in the units the policy learns in (its preprocessor's statistics of `key`)."""
        step = next(s for s in self.preprocessor.steps if isinstance(s, NormalizerProcessorStep))
        feature_type = {**self.config.input_features, **self.config.output_features}[key].type
        return step._apply_transform(x, key, feature_type)
