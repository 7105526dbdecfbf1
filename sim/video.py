"""Rollout videos: uint8 frames -> H.264 mp4, written to a temporary file and renamed."""

import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_mp4(path: str | Path, frames: Sequence[np.ndarray], fps: float = 5) -> Path:
    """Encode (H, W, 3) uint8 frames (H and W even) to `path`; returns the path."""
    path = Path(path)
    if len(frames) == 0:
        raise ValueError(f"no frames to write to {path}")
    h, w, c = frames[0].shape
    if c != 3 or h % 2 or w % 2:
        raise ValueError(f"frames must be (H, W, 3) with even H and W for H.264, got {frames[0].shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.mp4")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for frame in frames:
            container.mux(
                stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24"))
            )
        container.mux(stream.encode(None))
    os.replace(tmp, path)
    return path
