"""The models that learn from video, one package each, with what they share beside them.

    lam/         latent action model: config + model + quantizers (model.py, quantize.py), its losses,
                 training (train.py) and the labelling of datasets with its codes (label.py)
    backbone/    video-prediction backbone pretrained on the labelled video (model.py, train.py)
    neural_sim/  neural simulator: state model, judge, video model and probe (model.py), their world-state
                 arithmetic (dynamics.py), inference (simulator.py), a gymnasium env (env.py), training
    layers.py    network pieces shared by the models (attention, space-time blocks, patches, warp)
    metrics.py   image comparisons (SSIM, PSNR)
    training/    the one training loop, its schedule, weight average, checkpoints and data parallelism

Inference modules (model.py, label.py, simulator.py, env.py) never import a training module.
"""
