"""Matching an env's observations to the features a policy reads, for the evaluation harness (the
control loop does the same for a robot's observations in policies/control/runtime.py).

A LeRobot policy names its inputs in `config.input_features` (from the dataset it was trained on):
its camera key, `observation.state` and, for state_fm only, `observation.environment_state`. An env
renders its camera under its own name (`observation.images.image` here, whatever the scene's
camera). `FeatureMap` renames the env's one camera to the policy's one camera and checks shapes
once, so a mismatch is an error that names both sides instead of a KeyError deep in the policy.
Policies without input features (scripted, random) get the batch as it is.
"""

from lerobot.configs import FeatureType

IMAGES = "observation.images."


def policy_input_features(policy) -> dict | None:
    """The input features of a LeRobot-style policy (or an adapter with a `config`), else None."""
    features = getattr(getattr(policy, "config", None), "input_features", None)
    return dict(features) if features else None


class FeatureMap:
    def __init__(self, policy, batch: dict, hint: str = ""):
        """`batch`: a first observation batch from the env (LeRobot keys, images (B, C, H, W)). `hint`:
        what to change when shapes differ (e.g. "set task.image_size")."""
        self.rename: dict[str, str] = {}
        features = policy_input_features(policy)
        if features is None:
            return
        wanted = [k for k, f in features.items() if f.type is FeatureType.VISUAL]
        have = sorted(k for k in batch if k.startswith(IMAGES))
        if not set(wanted) <= set(have):
            if len(wanted) != 1 or len(have) != 1:
                raise ValueError(
                    f"the policy reads the camera(s) {wanted}; the env renders {have}: only one camera on "
                    "each side can be matched by renaming"
                )
            self.rename = {have[0]: wanted[0]}
        for env_key, key in [(k, self.rename.get(k, k)) for k in have]:
            if key in features and tuple(batch[env_key].shape[-3:]) != tuple(features[key].shape):
                raise ValueError(
                    f"the policy's camera {key!r} is {tuple(features[key].shape)} (C, H, W); the env renders "
                    f"{env_key!r} at {tuple(batch[env_key].shape[-3:])}{hint}"
                )
        for key, feature in features.items():
            if feature.type is FeatureType.VISUAL:
                continue
            if key not in batch:
                raise ValueError(
                    f"the policy reads {key!r} {tuple(feature.shape)}; the env's observation has "
                    f"{sorted(k for k in batch if k != 'task')}"
                )
            if tuple(batch[key].shape[-1:]) != tuple(feature.shape[-1:]):
                raise ValueError(
                    f"the policy's {key!r} has {feature.shape[-1]} dimensions; the env's has {batch[key].shape[-1]}"
                )

    def __call__(self, batch: dict) -> dict:
        if not self.rename:
            return batch
        return {self.rename.get(k, k): v for k, v in batch.items()}
