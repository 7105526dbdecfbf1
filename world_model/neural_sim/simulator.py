"""A trained neural simulator for inference (world_model/neural_sim/env.py wraps it in gymnasium)."""

import warnings
from pathlib import Path

import torch

from world_model.neural_sim.dynamics import ACTION, WORLD, denormalize, judge_logits, normalize, state_step
from world_model.neural_sim.model import (
    STATE_DIM,
    NeuralRenderer,
    NeuralSimConfig,
    build_modules,
    video_condition,
)
from world_model.training.checkpoint import load_trained


class NeuralSim:
    """A trained neural simulator for inference: raw (unnormalised) states and actions in and out."""

    def __init__(self, modules: dict, stats: dict):
        self.states, self.judge = modules["states"].eval(), modules["judge"].eval()
        self.dynamics, self.probe = modules["dynamics"].eval(), modules["probe"].eval()
        self.renders = isinstance(self.dynamics, NeuralRenderer)  # draws from the first frame, not the last
        self.stats = stats
        self.action_low = torch.tensor(stats[ACTION]["min"])
        self.action_high = torch.tensor(stats[ACTION]["max"])
        self._warned = False

    def clip_action(self, action: torch.Tensor) -> torch.Tensor:
        """Actions outside the range seen in training are clipped to it, with one warning per simulator."""
        clipped = torch.maximum(torch.minimum(action, self.action_high), self.action_low)
        if not self._warned and not torch.equal(clipped, action):
            warnings.warn(
                f"actions outside the neural simulator's training range [{self.action_low.tolist()}, "
                f"{self.action_high.tolist()}] are clipped to it",
                stacklevel=2,
            )
            self._warned = True
        return clipped

    def start(self, frame: torch.Tensor, world: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The video model's context at an episode's first frame (B, 3, H, W) and raw state (B, 15): frames
        t-1 = t = the first frame (warp: it then moves on with the drawn frames), or the first frame and its
        normalised state (render: they stay for the whole episode)."""
        if self.renders:
            return frame, normalize(world, self.stats[WORLD])
        return frame, frame

    @torch.no_grad()
    def step_state(self, world, action, last_action) -> torch.Tensor:
        """The state model alone: raw world state (B, 15), raw actions at t and t-1 (B, 7) -> the next raw
        world state, as `step` moves it (the action at t clipped, the one before taken as given)."""
        action = normalize(self.clip_action(action), self.stats[ACTION])
        last_action = normalize(last_action, self.stats[ACTION])
        return state_step(self.states, world, action, last_action, self.stats)[0]

    @torch.no_grad()
    def step(self, context, world, action, last_action) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """The video model's context (from `start`, then from the last step), raw world state (B, 15), raw
        actions at t and t-1 (B, 7) -> next frame (B, 3, H, W) in [0, 1], next world, next context. The
        action at t-1 is taken as given: pass it as clipped at its own step, and zeros before the first
        step (as in training)."""
        next_world = self.step_state(world, action, last_action)
        action = normalize(self.clip_action(action), self.stats[ACTION])
        norm = self.stats[WORLD]
        if self.renders:
            first, first_world = context
            frame = self.dynamics(first, video_condition(first_world, action, normalize(next_world, norm)))
            return frame, next_world, context
        prev, frame = context
        cond = video_condition(normalize(world, norm), action, normalize(next_world, norm))
        frame_next = self.dynamics(prev, frame, cond)
        return frame_next, next_world, (frame, frame_next)

    @torch.no_grad()
    def judge_state(self, world) -> dict[str, torch.Tensor]:
        """Probabilities (B,) of success and of fingers on the object in raw world states (B, 15)."""
        success_logit, grasp_logit = judge_logits(self.judge, world, self.stats)
        return {"success": torch.sigmoid(success_logit), "grasp": torch.sigmoid(grasp_logit)}

    @torch.no_grad()
    def read(self, frame) -> dict[str, torch.Tensor]:
        """What the probe sees in frames (B, 3, H, W): raw robot state (B, 7) and object poses (B, 8)."""
        world = denormalize(self.probe(frame), self.stats[WORLD])
        return {"state": world[:, :STATE_DIM], "env_state": world[:, STATE_DIM:]}


def load_neural_sim(path: str | Path) -> NeuralSim:
    modules, meta = load_trained(
        path, "neural simulator", lambda config: build_modules(NeuralSimConfig(**config))
    )
    return NeuralSim(modules, meta["stats"])
