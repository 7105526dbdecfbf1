"""The neural simulator's world-state arithmetic, shared by training and inference: the dataset's keys,
normalisation, one step of the state model (a held object moves with the hand) and the judge's reading
of a state."""

import torch

from data.chunks import EpisodeBank
from world_model.neural_sim.model import (
    OBJECT_YAW_MASK,
    STATE_DIM,
    StateDynamics,
    SuccessJudge,
    geometry_features,
    wrap_angle,
)

STATE, ENV_STATE, ACTION = "observation.state", "observation.environment_state", "action"
SUCCESS, GRASP = "success", "grasped_now"
WORLD = "world"  # robot state and object poses side by side (B, 15)
COLUMNS = [STATE, ENV_STATE, ACTION, SUCCESS, GRASP]


def on_table(world: torch.Tensor) -> torch.Tensor:
    """(..., 15) raw world states -> (...) bool: both objects still on the table. Random actions knock one
    off now and then (0.7% of the frames); it then falls without end, so those frames are left out."""
    x, z = world[..., [7, 11]], world[..., [9, 13]]
    return ((z > -0.03) & (x > -0.3) & (x < 1.0)).all(dim=-1)


def statistics(bank: EpisodeBank) -> dict[str, dict[str, list[float]]]:
    """Mean / std of the world state (objects on the table) and the actions, and the actions' range."""
    world, action = world_columns(bank), bank.columns[ACTION]
    world = world[on_table(world)]
    stats = {
        key: {"mean": v.mean(0).tolist(), "std": v.std(0).clamp_min(1e-3).tolist()}
        for key, v in ((WORLD, world), (ACTION, action))
    }
    stats[ACTION] |= {"min": action.min(0).values.tolist(), "max": action.max(0).values.tolist()}
    return stats


def world_columns(bank: EpisodeBank) -> torch.Tensor:
    return torch.cat([bank.columns[STATE], bank.columns[ENV_STATE]], dim=-1)  # (F, 15)


def normalize(x: torch.Tensor, stat: dict) -> torch.Tensor:
    return (x - torch.tensor(stat["mean"], device=x.device)) / torch.tensor(stat["std"], device=x.device)


def denormalize(x: torch.Tensor, stat: dict) -> torch.Tensor:
    return x * torch.tensor(stat["std"], device=x.device) + torch.tensor(stat["mean"], device=x.device)


def state_inputs(world: torch.Tensor, stats: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw world states (B, 15) -> what the state model and the judge read: the normalised state with the
    object yaws zeroed (they enter as angles through the geometry, their raw values jump at +-pi), and
    the geometry features (B, GEO_DIM)."""
    x = normalize(world, stats[WORLD])
    return torch.where(OBJECT_YAW_MASK.to(world.device), 0.0, x), geometry_features(world)


def state_step(
    states: StateDynamics, world: torch.Tensor, action: torch.Tensor, last_action: torch.Tensor, stats: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw world state (B, 15), normalised actions at t and t-1 (B, 7) -> the next raw world state and the
    attachment logit (B,). The action before matters: the arm lags its targets. A held source object
    turns with the hand about the hand's axis and moves with it; everything else moves freely."""
    std = torch.tensor(stats[WORLD]["std"], device=world.device)
    x, geo = state_inputs(world, stats)
    robot_change, attach_logit, free_change = states(x, torch.cat([action, last_action], dim=-1), geo)
    robot_change = robot_change * std[:STATE_DIM]  # (B, 7) metres and radians
    carried = carried_change(world, robot_change)  # (B, 8)
    object_change = torch.sigmoid(attach_logit) * carried + free_change * std[STATE_DIM:]
    robot = world[:, :STATE_DIM] + robot_change
    robot = torch.cat([robot[:, :-1], robot[:, -1:].clamp(0, 1)], dim=1)  # the gripper closes within [0, 1]
    objects = world[:, STATE_DIM:] + object_change
    objects = torch.where(OBJECT_YAW_MASK[STATE_DIM:].to(world.device), wrap_angle(objects), objects)
    return torch.cat([robot, objects], dim=1), attach_logit[:, 0]


def carried_change(world: torch.Tensor, robot_change: torch.Tensor) -> torch.Tensor:
    """How the source object's pose (B, 8 with the target's zeros) changes if the hand holds it while the
    hand moves by `robot_change` (B, 7, raw): its offset from the hand turns by the hand's yaw change."""
    offset = world[:, 7:9] - world[:, 0:2]  # (B, 2) object from hand, in the table plane
    turn = robot_change[:, 5]
    cos, sin = turn.cos(), turn.sin()
    turned = torch.stack(
        [cos * offset[:, 0] - sin * offset[:, 1], sin * offset[:, 0] + cos * offset[:, 1]], dim=1
    )
    xy = robot_change[:, 0:2] + turned - offset
    return torch.cat(
        [xy, robot_change[:, 2:3], robot_change[:, 5:6], torch.zeros_like(world[:, 11:15])], dim=1
    )


def world_error(predicted: torch.Tensor, real: torch.Tensor, stats: dict) -> torch.Tensor:
    """Normalised difference of raw world states (..., 15), object yaws the short way round."""
    diff = predicted - real
    diff = torch.where(OBJECT_YAW_MASK.to(diff.device), wrap_angle(diff), diff)
    return diff / torch.tensor(stats[WORLD]["std"], device=diff.device)


def judge_logits(judge: SuccessJudge, world: torch.Tensor, stats: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return judge(*state_inputs(world, stats))
