"""Inverse dynamics model: pseudo-action labels for the actionless video (VPT), the ours_idm variant."""
