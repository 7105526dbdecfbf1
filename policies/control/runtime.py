"""The fixed-rate control loop: executes action chunks from any policy with `predict_action_chunk`
on any LeRobot `Robot`, while the next chunk is computed on a worker thread.

Each tick (1 / hz seconds):

    observe ─► take over with a chunk that has arrived ─► start the next inference if the plan runs
    low ─► pop this tick's action (or hold: watchdog) ─► safety filter ─► send ─► sleep to the next tick

The next inference starts when the plan holds (chunk - executed) ticks, or earlier if the measured
inference delay needs it; when the new chunk lands, its actions for the ticks that passed meanwhile
are dropped (policies.control.chunking), so each chunk runs its steps d .. d + execute - 1 for a
delay of d ticks, the ones meant for the ticks they run at.
"""

import gc
import logging
import math
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from lerobot.configs import FeatureType

from policies.control.chunking import ChunkPlan, boundary_jump_ratio, resample_chunk
from policies.control.safety import SafetyConfig, SafetyFilter, Watchdog

log = logging.getLogger("policies.control")
ENV_KEY = "observation.environment_state"


# ---------------------------------------------------------------------------------------------- clocks
class RealClock:
    """perf_counter time; `sleep_until` sleeps, then spins the last `spin_s` (sleep overshoots by ~0.1-1 ms)."""

    def __init__(self, spin_s: float = 0.001):
        self.spin_s = spin_s

    def now(self) -> float:
        return time.perf_counter()

    def sleep_until(self, t: float) -> None:
        remaining = t - time.perf_counter()
        if remaining > self.spin_s:
            time.sleep(remaining - self.spin_s)
        while time.perf_counter() < t:
            pass


class FakeClock:
    """A clock that only moves when told: `sleep_until` jumps to the target, `advance` adds time."""

    def __init__(self, start: float = 0.0):
        self.t = start

    def now(self) -> float:
        return self.t

    def sleep_until(self, t: float) -> None:
        self.t = max(self.t, t)

    def advance(self, dt: float) -> None:
        self.t += dt


# ---------------------------------------------------------------------------------------------- inference
@dataclass
class ChunkResult:
    chunk: np.ndarray | None  # (H, A) at the policy's rate; None when inference raised
    obs_tick: int  # the tick whose observation it was computed from
    seconds: float  # inference time
    error: BaseException | None = None


class ThreadWorker:
    """Runs `infer(batch) -> (H, A)` on one background thread, one request at a time."""

    def __init__(self, infer: Callable[[dict], np.ndarray], clock):
        self.infer, self.clock = infer, clock
        self._requests: queue.Queue = queue.Queue()
        self._results: queue.Queue = queue.Queue()
        self.busy = False
        self._thread = threading.Thread(target=self._serve, name="inference", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (request := self._requests.get()) is not None:
            batch, tick = request
            start = self.clock.now()
            try:
                chunk, error = self.infer(batch), None
            except BaseException as e:  # handed to the loop, which stops the robot
                chunk, error = None, e
            self._results.put(ChunkResult(chunk, tick, self.clock.now() - start, error))

    def submit(self, batch: dict, tick: int) -> None:
        if self.busy:
            raise RuntimeError("an inference is already running")
        self.busy = True
        self._requests.put((batch, tick))

    def poll(self) -> ChunkResult | None:
        try:
            result = self._results.get_nowait()
        except queue.Empty:
            return None
        self.busy = False
        return result

    def drain(self, timeout_s: float = 60.0) -> None:
        """Wait for a running inference and drop its result (it belongs to a run that has ended)."""
        if self.busy:
            try:
                self._results.get(timeout=timeout_s)
            except queue.Empty:
                raise TimeoutError(f"inference still running after {timeout_s} s") from None
            self.busy = False

    def close(self) -> None:
        self.drain()  # never leave the thread running the policy: the caller may reuse it
        self._requests.put(None)
        self._thread.join(timeout=5.0)


# ---------------------------------------------------------------------------------------------- observations
class ObservationAdapter:
    """Robot observations (LeRobot's flat dict: float motors, HWC uint8 cameras) -> policy batches.

    Float features become `observation.state` in the robot's order, except privileged ones (`env.*`,
    a simulator's object poses), which become `observation.environment_state` for a policy that reads
    it; the camera becomes the policy's image key. A policy reading n_obs_steps frames gets them one
    policy step apart, from the history.
    """

    def __init__(self, robot_features: dict, policy_config, task: str, ticks_per_step: int):
        floats = [k for k, v in robot_features.items() if v is float]
        self.state_keys = [k for k in floats if not k.startswith("env.")]
        wants_env = ENV_KEY in policy_config.input_features
        self.env_keys = [k for k in floats if k.startswith("env.")] if wants_env else []
        if wants_env and (len(self.env_keys),) != tuple(policy_config.input_features[ENV_KEY].shape):
            raise ValueError(
                f"the policy's {ENV_KEY!r} expects {tuple(policy_config.input_features[ENV_KEY].shape)}; the "
                f"robot observes env.* features {self.env_keys or 'none'} (a simulated robot with privileged=true has them)"
            )
        cameras = {k: v for k, v in robot_features.items() if isinstance(v, tuple)}
        images = {k: f for k, f in policy_config.input_features.items() if f.type is FeatureType.VISUAL}
        if len(images) != 1 or len(cameras) != 1:
            raise ValueError(
                f"need exactly one camera on each side: the robot has {list(cameras)}, the policy reads {list(images)}"
            )
        (self.camera, cam_shape), (self.image_key, image) = (
            next(iter(cameras.items())),
            next(iter(images.items())),
        )
        h, w, c = cam_shape
        if (c, h, w) != tuple(image.shape):
            raise ValueError(
                f"robot camera {self.camera!r} gives {tuple(cam_shape)} (H, W, C); the policy's "
                f"{self.image_key!r} expects {tuple(image.shape)} (C, H, W)"
            )
        state = policy_config.input_features.get("observation.state")
        if state is not None and tuple(state.shape) != (len(self.state_keys),):
            raise ValueError(
                f"the robot's state has {len(self.state_keys)} values {self.state_keys}; the policy's "
                f"observation.state expects {tuple(state.shape)}"
            )
        self.n_obs_steps = int(getattr(policy_config, "n_obs_steps", 1))
        self.task, self.ticks_per_step = task, ticks_per_step
        self.history: deque[dict] = deque(maxlen=(self.n_obs_steps - 1) * ticks_per_step + 1)

    def observe(self, obs: dict) -> None:
        self.history.append(obs)

    def batch(self) -> dict:
        """The latest observation (and earlier ones, one policy step apart) as a batch of one."""
        if not self.history:
            raise RuntimeError("no observation yet")
        picks = [
            self.history[max(0, len(self.history) - 1 - k * self.ticks_per_step)]
            for k in reversed(range(self.n_obs_steps))
        ]
        images = torch.stack([torch.from_numpy(np.ascontiguousarray(o[self.camera])) for o in picks])
        images = images.permute(0, 3, 1, 2).float().div_(255.0)[None]  # (1, n, 3, H, W)
        state = torch.tensor([[o[k] for k in self.state_keys] for o in picks], dtype=torch.float32)[None]
        batch = {self.image_key: images, "observation.state": state, "task": [self.task]}
        if self.env_keys:
            batch[ENV_KEY] = torch.tensor(
                [[o[k] for k in self.env_keys] for o in picks], dtype=torch.float32
            )[None]
        if self.n_obs_steps == 1:
            batch = {k: v[:, 0] if k != "task" else v for k, v in batch.items()}
        return batch

    def reset(self) -> None:
        self.history.clear()


def chunk_function(policy) -> Callable[[dict], np.ndarray]:
    """batch -> (H, A) numpy actions from `policy.predict_action_chunk` (batch of one)."""

    def infer(batch: dict) -> np.ndarray:
        with torch.inference_mode():
            chunk = policy.predict_action_chunk(batch)
        return chunk[0].detach().cpu().numpy().astype(np.float64)

    return infer


def policy_action_dim(policy) -> int:
    features = getattr(policy.config, "output_features", None) or {}
    if "action" not in features:
        raise ValueError(f"policy {type(policy).__name__} declares no 'action' output feature")
    return int(features["action"].shape[0])


# ---------------------------------------------------------------------------------------------- the loop
@dataclass
class ControlConfig:
    hz: float = 20.0  # control rate
    policy_hz: float = 5.0  # the rate the policy's chunks are written at (the dataset's fps)
    execute_steps: int | None = (
        None  # policy steps run per chunk before the next takes over (None: policy's n_action_steps)
    )
    smoothing: str = "blend"  # none | blend | ensemble (policies.control.chunking)
    blend_s: float = 0.4  # blend: hand-over time from the old plan to the new chunk
    ensemble_decay: float = 0.01  # ensemble: ACT's m, per ensemble rank
    interpolate: bool = False  # absolute dimensions: ramp to each target instead of holding it
    delay_margin_ticks: int = 1  # start inference this many ticks earlier than the measured delay needs
    spin_s: float = 0.001  # busy-wait before each tick for a precise start
    switch_interval_s: float = 0.0005  # Python's GIL switch interval while the loop runs (default 5 ms)
    inference_threads: int = 1  # torch threads for inference; the loop keeps the other core
    pause_gc: bool = True  # no automatic garbage collection during a run (a full one can take ms)
    status_every_s: float = 0.5  # live status line period (0: off)
    safety: SafetyConfig = field(default_factory=SafetyConfig)

    def __post_init__(self):
        if isinstance(self.safety, dict):
            self.safety = SafetyConfig(**self.safety)
        if self.hz <= 0 or self.policy_hz <= 0:
            raise ValueError(f"hz and policy_hz must be > 0, got {self.hz} and {self.policy_hz}")
        ratio = self.hz / self.policy_hz
        if ratio < 1 or abs(ratio - round(ratio)) > 1e-9:
            raise ValueError(
                f"control rate {self.hz} Hz must be a whole multiple of the policy's {self.policy_hz} Hz "
                "(each policy step is then split into equal ticks)"
            )

    @property
    def ticks_per_step(self) -> float:
        return self.hz / self.policy_hz


@dataclass
class ControlReport:
    """Everything one run measured; `summary()` reduces it to the benchmark's keys."""

    hz: float
    tick_start: list[float] = field(default_factory=list)
    # How long after its tick's deadline (the next tick's start) each action was sent; <= 0: on time.
    tick_late_s: list[float] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    boundary: list[bool] = field(default_factory=list)
    inference_s: list[float] = field(default_factory=list)  # worker inferences (the warm-up apart)
    warmup_s: float = float("nan")  # the first, synchronous (and cold) inference
    delay_ticks: list[int] = field(default_factory=list)
    held_ticks: int = 0
    events: list[dict] = field(default_factory=list)
    stop_reason: str = ""
    clipped_bounds: int = 0
    clipped_change: int = 0

    def summary(self, scale: np.ndarray | None = None) -> dict:
        return summarize([self], scale)


def summarize(reports: list[ControlReport], scale: np.ndarray | None = None) -> dict:
    """The benchmark's keys over one or more runs (periods and jumps never span two runs)."""
    pct = lambda x, q: float(np.percentile(x, q)) if len(x) else float("nan")  # noqa: E731
    period_ms = np.concatenate([np.diff(r.tick_start) * 1000.0 for r in reports] + [np.zeros(0)])
    nominal = 1000.0 / reports[0].hz
    inference_ms = np.concatenate([np.asarray(r.inference_s) * 1000.0 for r in reports])
    return {
        "steps": sum(len(r.tick_start) for r in reports),
        "period_ms_p50": pct(period_ms, 50),
        "period_ms_p99": pct(period_ms, 99),
        "jitter_ms_p99": pct(np.abs(period_ms - nominal), 99),
        "deadline_misses": int(sum(np.sum(np.asarray(r.tick_late_s) > 0) for r in reports)),
        "inference_ms_p50": pct(inference_ms, 50),
        "inference_ms_p99": pct(inference_ms, 99),
        "delay_ticks_max": int(max((d for r in reports for d in r.delay_ticks), default=0)),
        "chunks": int(sum(len(r.inference_s) for r in reports)),
        "held_ticks": sum(r.held_ticks for r in reports),
        "clipped_bounds": sum(r.clipped_bounds for r in reports),
        "clipped_change": sum(r.clipped_change for r in reports),
        "boundary_jump_ratio": boundary_jump_ratio(
            [np.asarray(r.actions) for r in reports], [np.asarray(r.boundary) for r in reports], scale
        ),
        "stop_reason": ",".join(sorted({r.stop_reason for r in reports})),
    }


class WatchdogStop(RuntimeError):
    """The robot went without a fresh action for longer than safety.stop_after_s."""


class ControlLoop:
    """Drives `robot` with `policy` at cfg.hz. The robot must be connected; the loop never disconnects it
    (run_session does), but every way out of `run` (end, watchdog, Ctrl-C, error) sends the hold action."""

    def __init__(self, robot, policy, cfg: ControlConfig, task: str = "", clock=None, worker=None):
        self.robot, self.policy, self.cfg = robot, policy, cfg
        self.clock = clock or RealClock(cfg.spin_s)
        self.action_keys = list(robot.action_features)
        self.action_dim = policy_action_dim(policy)
        if self.action_dim != len(self.action_keys):
            raise ValueError(
                f"the policy's actions have shape ({self.action_dim},), the robot takes "
                f"({len(self.action_keys)},) {self.action_keys}"
            )
        tps = cfg.ticks_per_step
        self.adapter = ObservationAdapter(robot.observation_features, policy.config, task, round(tps))
        self.safety = SafetyFilter(cfg.safety, self.action_dim, tps)
        execute = cfg.execute_steps or getattr(policy.config, "n_action_steps", None) or 1
        self.execute_ticks = max(1, round(execute * tps))
        self.plan = ChunkPlan(
            self.action_dim, cfg.smoothing, max(1, round(cfg.blend_s * cfg.hz)), cfg.ensemble_decay
        )
        self.infer = chunk_function(policy)
        self.worker = worker or ThreadWorker(self.infer, self.clock)
        self.on_status: Callable[[str], None] | None = None

    # ---- chunks -------------------------------------------------------------------------------
    def _to_ticks(self, chunk: np.ndarray) -> np.ndarray:
        previous = self.safety.last / self.safety.scale if self.safety.last is not None else None
        return resample_chunk(
            chunk, self.cfg.policy_hz, self.cfg.hz, self.safety.delta, previous, self.cfg.interpolate
        )

    def _valid(self, chunk, tick: int, report: ControlReport) -> bool:
        if chunk is None or chunk.ndim != 2 or chunk.shape[1] != self.action_dim:
            self._event(
                report,
                tick,
                "chunk_rejected",
                f"shape {getattr(chunk, 'shape', None)}, expected (H, {self.action_dim})",
            )
            return False
        if not np.all(np.isfinite(chunk)):
            self._event(
                report, tick, "chunk_rejected", f"{int(np.sum(~np.isfinite(chunk)))} non-finite values"
            )
            return False
        return True

    def _take_over(self, result: ChunkResult, tick: int, report: ControlReport) -> None:
        report.inference_s.append(result.seconds)
        if result.error is not None:
            error = result.error
            raise RuntimeError(f"inference failed at tick {tick}: {type(error).__name__}: {error}") from error
        if not self._valid(result.chunk, tick, report):
            return
        takeover = self.plan.integrate(self._to_ticks(result.chunk), result.obs_tick, tick)
        report.delay_ticks.append(takeover.delay_ticks)
        if takeover.usable == 0:
            self._event(
                report, tick, "chunk_late", f"arrived {takeover.delay_ticks} ticks after its observation"
            )

    def _refill_threshold(self, report: ControlReport) -> int:
        """Start the next inference when the plan holds this many ticks or fewer.

        A chunk is anchored at its observation's tick, so the next one takes over execute_ticks after
        this one was observed whatever the delay: start at (chunk - execute) ticks left. But never later
        than the delay the next chunk will likely take (the worst of the last 8) plus a margin, or the
        plan would run dry while it is computed.
        """
        recent = report.delay_ticks[-8:] or [math.ceil(report.warmup_s * self.cfg.hz)]
        return max(self.chunk_ticks - self.execute_ticks, max(recent) + self.cfg.delay_margin_ticks)

    # ---- the loop -----------------------------------------------------------------------------
    def warm_up(self, report: ControlReport) -> None:
        """One inference before the clock starts: the first plan, and a first delay estimate."""
        self.worker.drain()  # a chunk still computing for the previous run must not land in this one
        self.adapter.reset()
        self.plan.reset()
        self.safety.reset()
        self.adapter.observe(self.robot.get_observation())
        start = self.clock.now()
        chunk = self.infer(self.adapter.batch())
        report.warmup_s = self.clock.now() - start
        if not self._valid(chunk, 0, report):
            raise RuntimeError(f"the policy's first chunk is unusable: {report.events[-1]['detail']}")
        ticks = self._to_ticks(chunk)
        self.chunk_ticks = len(ticks)
        self.plan.integrate(ticks, 0, 0)

    def run(self, max_ticks: int | None = None, duration_s: float | None = None) -> ControlReport:
        """Run until max_ticks ticks or duration_s seconds (or a stop); returns what was measured."""
        cfg = self.cfg
        report = self.report = ControlReport(hz=cfg.hz)  # reachable after Ctrl-C or an error
        if max_ticks is None and duration_s is None:
            raise ValueError("give max_ticks or duration_s (Ctrl-C stops a run early)")
        if duration_s is not None:
            max_ticks = min(math.inf if max_ticks is None else max_ticks, round(duration_s * cfg.hz))
        if max_ticks < 1:
            raise ValueError(
                f"a run needs at least one tick, got max_ticks={max_ticks} (duration_s={duration_s})"
            )
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(cfg.switch_interval_s)  # the loop gets the GIL back fast from the worker
        threads = torch.get_num_threads()
        torch.set_num_threads(cfg.inference_threads)
        gc_was_enabled = gc.isenabled()
        if cfg.pause_gc:
            gc.collect()
            gc.disable()
        try:
            self.warm_up(report)
            self._event(report, 0, "start", f"{cfg.hz} Hz, smoothing {cfg.smoothing}, {max_ticks} ticks")
            self._loop(report, max_ticks)
            report.stop_reason = report.stop_reason or "done"
        except KeyboardInterrupt:
            report.stop_reason = "interrupted"
            self._event(report, len(report.tick_start), "interrupted", "Ctrl-C: holding and stopping")
            raise
        except WatchdogStop as e:
            report.stop_reason = "watchdog"
            self._event(report, len(report.tick_start), "watchdog_stop", str(e))
        except Exception as e:
            report.stop_reason = "error"
            self._event(report, len(report.tick_start), "error", f"{type(e).__name__}: {e}")
            raise
        finally:
            self._stop_robot(report)
            self.worker.drain()  # a chunk still computing must not outlive the run (policy.reset follows)
            report.clipped_bounds = self.safety.clipped_bounds
            report.clipped_change = self.safety.clipped_change
            sys.setswitchinterval(switch_interval)
            torch.set_num_threads(threads)
            if gc_was_enabled:
                gc.enable()
        return report

    def _loop(self, report: ControlReport, max_ticks: int) -> None:
        """Ticks are slots of the grid t0 + tick * dt: a tick whose slot has passed is skipped (its planned
        action dropped), so every action runs in the slot it was planned for and no burst catches up."""
        dt = 1.0 / self.cfg.hz
        watchdog = Watchdog(self.cfg.safety.stop_after_s)
        t0 = self.clock.now()
        last_status = t0
        starving = False
        tick = 0
        while tick < max_ticks:
            scheduled = t0 + tick * dt
            self.clock.sleep_until(scheduled)
            now = self.clock.now()
            report.tick_start.append(now)

            self.adapter.observe(self.robot.get_observation())
            observed = self.clock.now()
            result = self.worker.poll()
            if result is not None:
                self._take_over(result, tick, report)
            if not self.worker.busy and self.plan.remaining(tick) <= self._refill_threshold(report):
                self.worker.submit(self.adapter.batch(), tick)

            action, boundary = self.plan.pop(tick)
            if action is None:
                report.held_ticks += 1
                if not starving:
                    self._event(report, tick, "starved", "no planned action (inference late): holding")
                starving = True
                if watchdog.expired(now):
                    raise WatchdogStop(
                        f"no fresh action for {watchdog.starving_for(now):.2f} s > stop_after_s="
                        f"{watchdog.stop_after_s} s"
                    )
                action = self.safety.hold()
            else:
                watchdog.fresh(now)
                starving = False
                action = self.safety(action)
            sending = self.clock.now()
            self.robot.send_action(dict(zip(self.action_keys, action.tolist(), strict=True)))
            report.actions.append(action)
            report.boundary.append(boundary)

            sent = self.clock.now()
            late = sent - (scheduled + dt)
            report.tick_late_s.append(late)
            if late > 0:  # where the tick's time went: wake-up, observation, planning or send
                ms = lambda a, b: f"{(b - a) * 1000:.1f}"  # noqa: E731
                self._event(
                    report, tick, "deadline_miss", f"action sent {late * 1000:.1f} ms after the deadline "
                    f"(woke {ms(scheduled, now)} ms late, observation {ms(now, observed)} ms, planning "
                    f"{ms(observed, sending)} ms, send {ms(sending, sent)} ms)",
                )  # fmt: skip
            if self.on_status and self.cfg.status_every_s and now - last_status >= self.cfg.status_every_s:
                self.on_status(self._status(report, tick))
                last_status = now
            tick += 1 + (math.ceil(late / dt) if late > 0 else 0)  # past slots are skipped

    def _status(self, report: ControlReport, tick: int) -> str:
        recent = np.diff(report.tick_start[-50:])
        rate = 1.0 / recent.mean() if len(recent) else float("nan")
        inference = report.inference_s[-1] * 1000 if report.inference_s else float("nan")
        return (
            f"tick {tick:6d} | {rate:5.1f} Hz | period p99 {np.percentile(recent, 99) * 1000 if len(recent) else 0:5.1f} ms"
            f" | inference {inference:5.1f} ms | queue {self.plan.remaining(tick + 1):3d} | held {report.held_ticks}"
        )

    def _stop_robot(self, report: ControlReport) -> None:
        """Send the hold action once more, so the robot is left still whatever ended the run."""
        if self.safety.last is None:
            return
        try:
            self.robot.send_action(dict(zip(self.action_keys, self.safety.hold().tolist(), strict=True)))
        except Exception as e:  # the robot may be what failed; the caller still disconnects it
            self._event(report, len(report.tick_start), "hold_failed", f"{type(e).__name__}: {e}")

    def _event(self, report: ControlReport, tick: int, kind: str, detail: str) -> None:
        event = {"tick": tick, "time": self.clock.now(), "kind": kind, "detail": detail}
        report.events.append(event)
        level = logging.INFO if kind in ("start",) else logging.WARNING
        log.log(level, "tick %d: %s: %s", tick, kind, detail)

    def close(self) -> None:
        self.worker.close()
