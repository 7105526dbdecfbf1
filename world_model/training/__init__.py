"""Training infrastructure shared by every model the project trains (the latent action model, the
backbone, the neural simulator, the ViPRA-style policy and state_fm): one loop (`trainer.Trainer`),
its learning-rate schedule (`schedule`), the weight average (`ema`), safetensors checkpoints
(`checkpoint`) and data parallelism (`distributed`).

A model plugs in through a `trainer.TrainTask`: how to build it, draw a batch, compute its loss and
evaluate it. LeRobot's ACT baseline keeps lerobot's trainer. This file imports nothing, so inference
code that reads a checkpoint (`checkpoint.load_trained`) does not load the training loop."""
