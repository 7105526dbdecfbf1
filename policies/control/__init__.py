"""Real-time control: a fixed-rate loop executing action chunks on a LeRobot robot while the next chunk
is computed (runtime), chunk resampling and smooth takeover (chunking), limits and watchdog (safety)."""

from policies.control.chunking import ChunkPlan, boundary_jump_ratio, resample_chunk
from policies.control.runtime import ControlConfig, ControlLoop, ControlReport, FakeClock, RealClock
from policies.control.safety import SafetyConfig, SafetyFilter, Watchdog
from policies.control.session import load_policy, make_robot, run_session

__all__ = [
    "ChunkPlan",
    "ControlConfig",
    "ControlLoop",
    "ControlReport",
    "FakeClock",
    "RealClock",
    "SafetyConfig",
    "SafetyFilter",
    "Watchdog",
    "boundary_jump_ratio",
    "load_policy",
    "make_robot",
    "resample_chunk",
    "run_session",
]
