"""The neural simulator: a learned stand-in for MuJoCo that policies are evaluated in. A state model and
a success judge roll the world state forward; a video model draws the frames. `python -m
world_model.neural_sim.train` trains it on labelled rollouts; `load_neural_sim` and `NeuralTabletopEnv`
(gymnasium) run it."""

from world_model.neural_sim.simulator import NeuralSim, load_neural_sim

__all__ = ["NeuralSim", "load_neural_sim"]
