"""LeRobot plugin entry: importing it registers the "vipra" policy type with lerobot.

lerobot finds the rest by naming convention from VipraConfig's module: VipraPolicy in
policies.vipra.modeling_vipra, make_vipra_pre_post_processors in policies.vipra.processor_vipra.
"""

from policies.vipra import VipraConfig, VipraPolicy
from policies.vipra.processor_vipra import make_vipra_pre_post_processors

__all__ = ["VipraConfig", "VipraPolicy", "make_vipra_pre_post_processors"]
