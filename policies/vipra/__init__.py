"""ViPRA-style policy (LeRobot layout): configuration, modeling (backbone + flow-matching decoder),
processor (normalization, instruction ids)."""

from policies.vipra.configuration_vipra import VipraConfig
from policies.vipra.modeling_vipra import VipraPolicy, make_policy

__all__ = ["VipraConfig", "VipraPolicy", "make_policy"]
