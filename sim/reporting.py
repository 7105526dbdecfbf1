"""What every report carries: an atomic write and the stamp (the command, the commit and the machine). The
harness, the control loop and the benchmarks (bench/common.py) all write through these."""

import os
import platform
import subprocess
from pathlib import Path


def git_commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        # Results being rewritten under reports/ do not make the code that produced them dirty.
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!reports"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    """The CPU a figure was measured on. Runs are deterministic on one CPU model, but one seed's success has
    moved by up to 5.5 points between sessions with the same code (float kernels differ between CPUs)."""
    info = _cpuinfo()
    model = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info:  # the name alone ("AMD EPYC") does not tell the generations apart
        model += f" (family {info['cpu family']}, model {info.get('model', '?')})"
    flags = set(info.get("flags", "").split())
    simd = next((f for f in ("avx512f", "avx2", "neon", "asimd") if f in flags), None)
    return {"cpu": model, "simd": simd, "cores": os.cpu_count()}


def machine_line(info: dict) -> str:
    """machine() for a markdown footer: "AMD EPYC (family 25, model 17), avx512f, 2 cores"."""
    return ", ".join(str(v) + (" cores" if k == "cores" else "") for k, v in info.items() if v)


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo; empty where there is none (macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n")[0]
    pairs = (line.split(":", 1) for line in first.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def stamp(command: str) -> dict:
    """The keys every report ends with: the command that made it, the commit and the machine it ran on."""
    return {"command": command, "commit": git_commit(), "machine": machine()}


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
