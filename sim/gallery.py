"""A picture of the suite: every task in the nominal scene, in variants, and with the second embodiment.

python -m sim.gallery [--size 128] [--out reports/figures/tasks.png]
"""

import argparse
import os
from pathlib import Path

import av
import numpy as np

from sim.env import TabletopEnv
from sim.tasks import TASKS

COLUMNS = (  # (label, protocol, robot, seed)
    ("visual matching", "visual_matching", "widowx", 0),
    ("variant", "variant_aggregation", "widowx", 1),
    ("variant", "variant_aggregation", "widowx", 2),
    ("hand (actionless video)", "variant_aggregation", "hand", 3),
)


def first_frames(size: int) -> np.ndarray:
    """(tasks x columns) grid of first frames, as one (H, W, 3) uint8 image with 2-pixel gutters."""
    rows = []
    for task in TASKS:
        row = []
        for _, protocol, robot, seed in COLUMNS:
            env = TabletopEnv(task, protocol, image_size=size, robot=robot)
            row.append(
                np.pad(
                    env.reset(seed=seed)[0]["pixels"]["image"], ((2, 2), (2, 2), (0, 0)), constant_values=255
                )
            )
            env.close()
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    with av.open(str(tmp), mode="w", format="image2") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "rgb24"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        container.mux(stream.encode(None))
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("reports/figures/tasks.png"))
    args = parser.parse_args()
    write_png(args.out, first_frames(args.size))
    print(f"wrote {args.out}: rows {list(TASKS)}, columns {[c[0] for c in COLUMNS]}")


if __name__ == "__main__":
    main()
