"""The task suite as a LeRobot env: an `EnvConfig` registered as type "tabletop", so `lerobot-eval
--env.type=tabletop --env.task=stack_block` evaluates any LeRobot policy on it (the plugin distribution
`lerobot_env_tabletop` imports this module for lerobot's tools)."""

from dataclasses import dataclass, field

from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig

from sim.tasks import PROTOCOLS, get_task


@EnvConfig.register_subclass("tabletop")
@dataclass
class TabletopEnvConfig(EnvConfig):
    task: str | None = "stack_block"  # a name from sim.tasks.TASKS
    fps: int = 5
    protocol: str = "visual_matching"
    image_size: int = 64
    features: dict[str, PolicyFeature] = field(default_factory=dict)
    features_map: dict[str, str] = field(
        default_factory=lambda: {
            "action": "action",
            "agent_pos": "observation.state",
            "pixels/image": "observation.images.image",
        }
    )

    def __post_init__(self):
        get_task(self.task)  # raises with the known names
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; expected one of {PROTOCOLS}")
        s = self.image_size
        self.features = {
            "action": PolicyFeature(type=FeatureType.ACTION, shape=(7,)),
            "agent_pos": PolicyFeature(type=FeatureType.STATE, shape=(7,)),
            "pixels/image": PolicyFeature(type=FeatureType.VISUAL, shape=(s, s, 3)),
        }

    @property
    def package_name(self) -> str:
        return "sim"  # importing it registers the gym ids

    @property
    def gym_id(self) -> str:
        return get_task(self.task).gym_id

    @property
    def gym_kwargs(self) -> dict:
        return {"protocol": self.protocol, "image_size": self.image_size}
