"""What every benchmark shares: the stamp (command, commit, machine), atomic report and figure writing,
config composition for the scripts without a Hydra entry point, and one timing helper.

    report = {...} | stamp("python -m bench.train " + " ".join(sys.argv[1:]))
    write_report(Path("reports/bench/train_cpu.json"), report)
"""

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from sim.reporting import git_commit, stamp, write_atomic

CONF = Path(__file__).resolve().parents[1] / "conf"

__all__ = [
    "CONF",
    "compose_config",
    "git_commit",
    "percentiles",
    "save_figure",
    "stamp",
    "time_calls",
    "write_atomic",
    "write_report",
]


def write_report(path: Path, report: dict) -> None:
    """JSON through a temporary file and a rename, so a killed run leaves the previous report whole."""
    write_atomic(Path(path), json.dumps(report, indent=1) + "\n")


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """A matplotlib figure to `path` through a temporary file and a rename; closes the figure."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The root config with `overrides`, as a Hydra entry point would see it."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("config", overrides=list(overrides or []))


def time_calls(
    fn: Callable[[], object], repeats: int, warmup: int, device: str | torch.device = "cpu"
) -> list[float]:
    """Seconds of each of `repeats` calls of `fn`, after `warmup` untimed ones; CUDA work is waited for.
    Per call, not per block (torch.utils.benchmark.Timer's unit), so that tails (p99) can be read."""
    on_cuda = torch.device(device).type == "cuda"
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        seconds.append(time.perf_counter() - start)
    return seconds


def percentiles(seconds: list[float]) -> dict:
    """p50 / p99 in milliseconds, and the number of samples."""
    ms = 1000 * np.asarray(seconds)
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "n": len(ms)}
