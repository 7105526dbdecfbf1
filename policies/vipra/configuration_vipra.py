"""Configuration of the ViPRA-style policy: a video-prediction backbone and a chunked flow-matching
action decoder (LeRobot's `PreTrainedConfig`, registered as type "vipra")."""

from dataclasses import dataclass, field

from lerobot.configs import FeatureType, NormalizationMode, PolicyFeature, PreTrainedConfig
from lerobot.optim import AdamWConfig
from lerobot.optim.schedulers import LRSchedulerConfig
from torch.optim.lr_scheduler import LambdaLR

from world_model.backbone.model import BackboneConfig, backbone_config_of
from world_model.training.schedule import warmup_cosine

STATE_KEY = "observation.state"
ENV_STATE_KEY = "observation.environment_state"  # privileged object poses: only state_fm reads them
ACTION_KEY = "action"
CONTEXTS = ("video", "state")
DECODER_READS = ("all", "waypoints")


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
    # The features start empty and come from the dataset (lerobot-train's make_policy and the project's
    # trainer fill them as LeRobot's dataset_to_policy_features gives them); `validate_features` keeps
    # what the policy reads: `camera` (or the dataset's only camera), observation.state and action, and
    # for the state context observation.environment_state instead of a camera.
    n_obs_steps: int = 2
    input_features: dict[str, PolicyFeature] = field(default_factory=dict)
    output_features: dict[str, PolicyFeature] = field(default_factory=dict)
    camera: str | None = None  # the camera key to read when the dataset has several
    # Normalized by the processors (processor_vipra) with the dataset's statistics; frames stay in [0, 1].
    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "VISUAL": NormalizationMode.IDENTITY,
            "STATE": NormalizationMode.MEAN_STD,
            "ENV": NormalizationMode.MEAN_STD,
            "ACTION": NormalizationMode.MEAN_STD,
        }
    )
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

    # > 0: heatmaps on the conv stem's map of where the gripper will next close (on the object to pick) and
    # open (over the place), trained with this weight by cross-entropy against the demos' own hand
    # positions at those events, projected into the image with the camera's calibration (no object pose:
    # an image policy's labels); each map's peak is one more token for the decoder. Every frame before a
    # grasp teaches where the object is, where the action chunk says it only in the approach's few frames.
    waypoint_weight: float = 0.0
    # The camera's calibration (pos, target, fovy: conf/task `camera`). With it the waypoint tokens also
    # carry each map's peak seen on the table, in metres, on the plane at that event's `waypoint_heights`
    # (the demos' mean hand height there, set by train_policy): the decoder then compares where to go
    # with where the hand is in the same units, as state_fm compares object poses with the state.
    camera_calibration: dict | None = None
    waypoint_heights: list[float] = field(default_factory=list)
    # With the calibration: one more map finds the hand in the current frame (labels: the state's own hand
    # position, projected), and every event's point on the table moves by where the state says the hand is
    # minus where the calibration sees it. A camera moved since its calibration (variant aggregation's, by
    # up to 4 cm and 3 degrees) shifts both alike: the offset cancels most of its error near the hand.
    hand_anchor: bool = False
    # {"mean", "std"} of the state's first three dims (the hand's x, y, z in metres), the preprocessor's own
    # statistics, set by train_policy: the policy sees the state normalized.
    hand_position_stats: dict | None = None
    # What of the backbone the decoder reads besides the robot state. "all": the pooled image tokens, the
    # instruction token and the waypoint tokens. "waypoints": only the instruction and the waypoint tokens,
    # a bottleneck like state_fm's object poses: with few demos the decoder cannot recall a scene from its
    # pixels, and where the objects are reaches it only through the waypoint maps.
    decoder_reads: str = "all"

    # Action dimensions whose command is binary, 0 or 1 (the tabletop's gripper: conf/task), snapped by
    # the postprocessor to the nearer of the two: a sampled 0.7 would squeeze with part of the force and
    # drop what it holds.
    binary_action_dims: list[int] = field(default_factory=list)

    # Flow matching: time ~ Beta(time_alpha, 1) (pi0 / ViPRA: 1.5); K Euler steps at inference.
    time_alpha: float = 1.5
    num_inference_steps: int = 10
    # Few-step mode (shortcut models): this share of each batch learns step sizes 1 .. 2^-(levels-1).
    shortcut_fraction: float = 0.25
    shortcut_levels: int = 4
    # 0: self-consistency targets (a step of d = two of d/2, bootstrapped); K > 0: a step of d learns the
    # span the decoder's own K-step Euler sampler covers (distilled: 2 steps then reproduce K Euler steps).
    shortcut_teacher_steps: int = 0
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
        if self.shortcut_teacher_steps < 0:
            raise ValueError(
                f"shortcut_teacher_steps is 0 (self-consistency) or the Euler steps distilled, got {self.shortcut_teacher_steps}"
            )
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")
        if self.waypoint_weight and (
            self.context != "video" or not self.binary_action_dims or bb.stem != "conv"
        ):
            raise ValueError(
                "waypoint_weight > 0 draws heatmaps on the conv stem's map and finds gripper events in the "
                "binary action dims: needs context='video', backbone stem 'conv' and binary_action_dims (got "
                f"{self.context!r}, stem {bb.stem!r}, {self.binary_action_dims})"
            )

        if self.decoder_reads not in DECODER_READS:
            raise ValueError(f"decoder_reads must be one of {DECODER_READS}, got {self.decoder_reads!r}")
        if self.decoder_reads == "waypoints" and not self.waypoint_weight:
            raise ValueError("decoder_reads='waypoints' needs the waypoint maps: set waypoint_weight > 0")
        if self.hand_anchor and not (
            self.camera_calibration
            and self.hand_position_stats
            and all(len(self.hand_position_stats.get(k, ())) == 3 for k in ("mean", "std"))
        ):
            raise ValueError(
                "hand_anchor sees the hand on the table through the camera: needs waypoint_weight > 0, "
                "camera_calibration and hand_position_stats {'mean': [x, y, z], 'std': [x, y, z]} (got "
                f"calibration {self.camera_calibration}, stats {self.hand_position_stats})"
            )
        if self.camera_calibration and len(self.waypoint_heights) != 2:
            raise ValueError(
                "a calibrated camera sees the waypoints on planes at waypoint_heights: give one height (m) "
                f"per event (close, open), got {self.waypoint_heights}"
            )

    @property
    def image_key(self) -> str:
        keys = list(self.image_features)
        if len(keys) != 1:
            raise ValueError(f"the policy reads one camera; its input features have {keys}")
        return keys[0]

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
        """Keep the features the policy reads (from all the dataset has) and check them; with a backbone
        trained from scratch, its image size becomes the camera's."""
        have = [*self.input_features, *self.output_features]
        if ACTION_KEY not in self.output_features:
            raise ValueError(
                f"the policy needs {[ACTION_KEY]}, which the dataset lacks; its features are {have}"
            )
        self.output_features = {ACTION_KEY: self.output_features[ACTION_KEY]}
        if self.context == "state":
            needed = [k for k in (STATE_KEY, ENV_STATE_KEY) if k not in self.input_features]
            if needed:
                raise ValueError(f"the state context needs {needed}, which the dataset lacks; it has {have}")
            self.input_features = {k: self.input_features[k] for k in (STATE_KEY, ENV_STATE_KEY)}
            self._check_binary_dims()
            return
        camera = self._chosen_camera(have)
        missing = [STATE_KEY] if STATE_KEY not in self.input_features else []
        if missing:
            raise ValueError(f"the policy needs {missing}, which the dataset lacks; its features are {have}")
        # Never observation.environment_state (privileged object poses), even where the dataset has it.
        self.input_features = {k: self.input_features[k] for k in (camera, STATE_KEY)}
        self._fit_backbone_to(camera, tuple(self.input_features[camera].shape))
        self._check_binary_dims()

    def _chosen_camera(self, have: list[str]) -> str:
        cameras = [k for k, f in self.input_features.items() if f.type is FeatureType.VISUAL]
        if not cameras:
            raise ValueError(
                f"the policy needs a camera (observation.images.*), which the dataset lacks; its features are {have}"
            )
        if self.camera is not None:
            if self.camera not in cameras:
                raise ValueError(f"camera {self.camera!r} is not among the dataset's cameras {cameras}")
            return self.camera
        if len(cameras) > 1:
            raise ValueError(
                f"the dataset has cameras {cameras} and the policy reads one: name it with `camera`"
            )
        return cameras[0]

    def _fit_backbone_to(self, camera: str, shape: tuple) -> None:
        """A backbone from scratch takes the camera's size; a pretrained one must already have it."""
        if len(shape) != 3 or shape[0] != 3 or shape[1] != shape[2]:
            raise ValueError(
                f"camera {camera!r} has shape {shape}; the backbone reads square RGB frames (3, H, H)"
            )
        size = BackboneConfig(**self.backbone).image_size
        if shape[1] == size:
            return
        if self.pretrained_backbone:
            raise ValueError(
                f"camera {camera!r} is {shape[1]}x{shape[2]}, the pretrained backbone {self.pretrained_backbone} "
                f"takes {size}x{size}: record the dataset at {size}x{size} or pretrain a backbone at its size"
            )
        self.backbone = BackboneConfig(**(self.backbone | {"image_size": shape[1]})).to_dict()

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
