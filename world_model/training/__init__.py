"""Training infrastructure shared by every model the project trains (the latent action model, the
backbone, the neural simulator, the ViPRA-style policy and state_fm): one loop (`trainer.Trainer`),
its learning-rate schedule, the weight average, safetensors checkpoints and data parallelism.

A model plugs in through a `trainer.TrainTask`: how to build it, draw a batch, compute its loss and
evaluate it. LeRobot's ACT baseline keeps lerobot's own trainer."""

from world_model.training.trainer import Trainer, TrainTask

__all__ = ["Trainer", "TrainTask"]
