"""Configuration of the ViPRA-style policy: a video-prediction backbone and a chunked flow-matching
action decoder (LeRobot's `PreTrainedConfig`, registered as type "vipra")."""

from dataclasses import dataclass, field

from lerobot.configs import FeatureType, PolicyFeature, PreTrainedConfig
from lerobot.optim import AdamWConfig
from lerobot.optim.schedulers import LRSchedulerConfig
from torch.optim.lr_scheduler import LambdaLR

from world_model.backbone.model import BackboneConfig, backbone_config_of
from world_model.training.schedule import warmup_cosine

IMAGE_KEY = "observation.images.image"
STATE_KEY = "observation.state"
ENV_STATE_KEY = "observation.environment_state"  # privileged object poses: only state_fm reads them
ACTION_KEY = "action"
CONTEXTS = ("video", "state")


def default_input_features() -> dict[str, PolicyFeature]:
    return {
        IMAGE_KEY: PolicyFeature(FeatureType.VISUAL, (3, 64, 64)),
        STATE_KEY: PolicyFeature(FeatureType.STATE, (7,)),
    }


def default_output_features() -> dict[str, PolicyFeature]:
    return {ACTION_KEY: PolicyFeature(FeatureType.ACTION, (7,))}


@LRSchedulerConfig.register_subclass("warmup_cosine")
@dataclass
class WarmupCosineSchedulerConfig(LRSchedulerConfig):
    """The project trainer's schedule (world_model.training.schedule.warmup_cosine) for lerobot-train:
    linear warm-up, then a cosine to `floor` x the rate at the run's last step."""

    num_warmup_steps: int = 100
    floor: float = 0.1

    def build(self, optimizer, num_training_steps: int) -> LambdaLR:
        return LambdaLR(
            optimizer, lambda step: warmup_cosine(step, num_training_steps, self.num_warmup_steps, self.floor)
        )


@PreTrainedConfig.register_subclass("vipra")
@dataclass
class VipraConfig(PreTrainedConfig):
    # Inputs: frames t-1 and t (n_obs_steps = 2) of one camera, the robot state at t, the instruction.
    n_obs_steps: int = 2
    input_features: dict[str, PolicyFeature] | None = field(default_factory=default_input_features)
    output_features: dict[str, PolicyFeature] | None = field(default_factory=default_output_features)
    device: str | None = "cpu"
    push_to_hub: bool = False

    # Chunking: predict H actions, execute the first n_action_steps, then replan (ViPRA: 14 and 7).
    chunk_size: int = 14
    n_action_steps: int = 7

    # What the decoder cross-attends to. "video": the backbone over frames t-1, t and the instruction
    # (ours, Scratch-FM). "state": state_fm, the privileged ceiling: an MLP over the robot state and the
    # object poses (observation.environment_state) plus the instruction's words; no camera.
    context: str = "video"
    state_encoder_hidden: int = 256  # "state" context: width of the MLP over state + object poses
    vocab_size: int = 512  # "state" context: hashed instruction words (the backbone has its own)

    # The backbone (world_model.backbone.BackboneConfig fields); its horizon must equal chunk_size.
    backbone: dict = field(default_factory=lambda: BackboneConfig().to_dict())
    # A pretrained backbone's run folder (python -m world_model.backbone.train): its config replaces
    # `backbone` and its weights are loaded when the policy is built (finetuning); None: random weights
    # (Scratch-FM). A saved policy carries the weights, so its config.json leaves this empty.
    pretrained_backbone: str | None = None

    # Action decoder: a transformer over the H noisy actions, cross-attending to the backbone's context.
    dim: int = 128
    heads: int = 4
    layers: int = 3
    mlp_ratio: float = 4.0

    # Action dimensions whose command is binary, 0 or 1 (the tabletop's gripper: conf/task), snapped to
    # the nearer of the two after sampling: a sampled 0.7 would squeeze with part of the force and drop
    # what it holds.
    binary_action_dims: list[int] = field(default_factory=list)

    # Flow matching: time ~ Beta(time_alpha, 1) (pi0 / ViPRA: 1.5); K Euler steps at inference.
    time_alpha: float = 1.5
    num_inference_steps: int = 10
    # Few-step mode (shortcut models): this share of each batch learns step sizes 1 .. 2^-(levels-1).
    shortcut_fraction: float = 0.25
    shortcut_levels: int = 4
    few_step: bool = False  # sample with num_few_steps shortcut steps instead of K Euler steps
    num_few_steps: int = 2

    # Optimizer and schedule presets, used by lerobot-train and the project's trainer alike: AdamW,
    # linear warm-up then a cosine to scheduler_floor x the rate; the backbone learns at
    # lr * backbone_lr_scale (0 freezes it).
    optimizer_lr: float = 3e-4
    optimizer_weight_decay: float = 1e-4
    optimizer_grad_clip_norm: float = 1.0
    scheduler_warmup_steps: int = 100
    scheduler_floor: float = 0.1
    backbone_lr_scale: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if self.context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}, got {self.context!r}")
        if self.pretrained_backbone:
            if self.context == "state":
                raise ValueError(
                    f"the state context has no backbone: pretrained_backbone must be None (got {self.pretrained_backbone})"
                )
            self.backbone = backbone_config_of(self.pretrained_backbone)
        bb = BackboneConfig(**self.backbone)  # validates the fields
        if bb.horizon != self.chunk_size:
            raise ValueError(f"backbone horizon {bb.horizon} must equal chunk_size {self.chunk_size}")
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise ValueError(
                f"n_action_steps must be in 1..chunk_size={self.chunk_size}, got {self.n_action_steps}"
            )
        if self.n_obs_steps != 2:
            raise ValueError(
                f"the backbone reads frames t-1 and t: n_obs_steps must be 2, got {self.n_obs_steps}"
            )
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")

    @property
    def image_key(self) -> str:
        keys = list(self.image_features)
        return keys[0] if keys else IMAGE_KEY

    @property
    def action_dim(self) -> int:
        return self.output_features[ACTION_KEY].shape[0]

    @property
    def state_dim(self) -> int:
        return self.input_features[STATE_KEY].shape[0]

    @property
    def env_state_dim(self) -> int:
        return self.input_features[ENV_STATE_KEY].shape[0]

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(
            lr=self.optimizer_lr,
            weight_decay=self.optimizer_weight_decay,
            grad_clip_norm=self.optimizer_grad_clip_norm,
        )

    def get_scheduler_preset(self) -> WarmupCosineSchedulerConfig:
        return WarmupCosineSchedulerConfig(
            num_warmup_steps=self.scheduler_warmup_steps, floor=self.scheduler_floor
        )

    def validate_features(self) -> None:
        if self.context == "state":
            needed = [k for k in (STATE_KEY, ENV_STATE_KEY) if k not in self.input_features]
            needed += [ACTION_KEY] if ACTION_KEY not in self.output_features else []
            if needed:
                have = [*self.input_features, *self.output_features]
                raise ValueError(f"the state context needs {needed}, which the dataset lacks; it has {have}")
            self._check_binary_dims()
            return
        if ENV_STATE_KEY in self.input_features:
            raise ValueError(
                f"an image policy never reads {ENV_STATE_KEY!r} (privileged object poses): drop it from "
                "input_features, or set context='state' for the privileged state_fm"
            )
        images = self.image_features
        missing = ["a camera (observation.images.*)"] if not images else []
        missing += [STATE_KEY] if STATE_KEY not in self.input_features else []
        missing += [ACTION_KEY] if ACTION_KEY not in self.output_features else []
        if missing:
            have = [*self.input_features, *self.output_features]
            raise ValueError(f"the policy needs {missing}, which the dataset lacks; its features are {have}")
        if len(images) != 1:
            raise ValueError(f"the policy reads exactly one camera; input features have {list(images)}")
        size = BackboneConfig(**self.backbone).image_size
        shape = tuple(next(iter(images.values())).shape)
        if shape != (3, size, size):
            raise ValueError(
                f"camera {self.image_key!r} has shape {shape}, the backbone takes (3, {size}, {size})"
            )
        self._check_binary_dims()

    def _check_binary_dims(self) -> None:
        bad = [d for d in self.binary_action_dims if not 0 <= d < self.action_dim]
        if bad:
            raise ValueError(f"binary_action_dims {bad} are not action dimensions (0..{self.action_dim - 1})")

    @property
    def observation_delta_indices(self) -> list[int]:
        return [-1, 0]

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk_size))

    @property
    def reward_delta_indices(self) -> None:
        return None
