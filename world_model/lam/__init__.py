"""The latent action model: names each frame transition of a clip with a few discrete codes, learned
from video alone. `python -m world_model.lam.train` trains it, `python -m world_model.lam.label` labels a
dataset with its codes."""

from world_model.lam.model import LAMConfig, LatentActionModel, load_lam

__all__ = ["LAMConfig", "LatentActionModel", "load_lam"]
