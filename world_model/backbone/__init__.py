"""The video-prediction backbone: from two frames and the instruction, predicts a future frame and the
latent actions in between; its features are the policy's context. `python -m world_model.backbone.train`
pretrains it on actionless video labelled by the latent action model."""

from world_model.backbone.model import BackboneConfig, VideoBackbone, backbone_loss, load_backbone, tokenize

__all__ = ["BackboneConfig", "VideoBackbone", "backbone_loss", "load_backbone", "tokenize"]
