"""The local supervisor behind ``keeneye up``: child processes, health, restarts, autoscaling.

Every role is a child process described as data (:class:`ChildSpec`: a command line and an
environment), so tests can stand in small scripts for the API or a worker. The supervisor

* starts the fixed children (the API, the scheduler; plugins when they exist) and, per pipeline,
  the minimum number of worker replicas;
* restarts a child that exits with exponential backoff (doubling up to a cap, reset once the child
  has stayed up long enough) and a worker whose heartbeat went silent;
* every ``interval_seconds`` reads the workers' heartbeat files and the bus lag, asks the
  :class:`~keeneye.scaling.autoscaler.Autoscaler`, and starts or stops workers (stop = SIGTERM,
  SIGKILL after the grace period);
* writes the system view (``<home>/run/system.json``) that ``GET /v1/system`` serves;
* given a metrics directory, empties it at start, hands it to every child as
  ``PROMETHEUS_MULTIPROC_DIR`` (so the API's ``/metrics`` adds up all processes) and marks each
  exited child dead there, so the ``live*`` gauges forget it;
* stops gracefully: the API first (no new input), then the workers drain, then it returns.

Children write stdout/stderr to ``<home>/logs/<name>.log`` and run in their own session, so a
Ctrl-C reaches only the supervisor, which then stops them in order. On Linux each child also gets
SIGTERM should the supervisor itself die.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from keeneye.metrics import (
    MULTIPROC_ENV,
    Metrics,
    mark_process_dead,
    prepare_multiprocess_dir,
)
from keeneye.scaling.autoscaler import Autoscaler, ScalingDecision, ScalingPolicy
from keeneye.scaling.view import (
    DecisionView,
    PipelineView,
    ProcessState,
    ProcessView,
    Role,
    SystemView,
    write_view,
)
from keeneye.settings import ScalingSettings

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2  # how often exits are reaped and restarts started, between control ticks


@dataclass(frozen=True)
class ChildSpec:
    """One process the supervisor keeps running."""

    name: str  # unique; also the log file name
    role: Role
    command: tuple[str, ...]
    pipeline: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    health_url: str | None = None  # GET it every control tick; 200 = healthy


@dataclass(frozen=True)
class RestartBackoff:
    """Delay before restart ``n`` (1-based) of a child that keeps failing."""

    initial: float = 1.0
    cap: float = 60.0
    reset_after: float = 60.0  # a child up this long counts as healthy again

    def delay(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        return float(min(self.cap, self.initial * 2 ** (failures - 1)))


@dataclass
class Heartbeat:
    """A worker's heartbeat file (written by ``keeneye worker``)."""

    pid: int
    pipeline: str
    busy_fraction: float
    processed: int
    updated_at: float  # seconds since the epoch

    @classmethod
    def parse(cls, data: Mapping[str, Any], mtime: float) -> Heartbeat:
        return cls(
            pid=int(data["pid"]),
            pipeline=str(data["pipeline"]),
            busy_fraction=min(max(float(data.get("busy_fraction", 0.0)), 0.0), 1.0),
            processed=int(data.get("processed", 0)),
            updated_at=_epoch(data.get("updated_at"), mtime),
        )


def _epoch(value: Any, default: float) -> float:
    """Seconds since the epoch from a number or an ISO 8601 string; ``default`` otherwise."""
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return default


def heartbeat_dir(home: Path) -> Path:
    return home / "run" / "workers"


def multiprocess_metrics_dir(home: Path) -> Path:
    """Where ``keeneye up``'s processes write their metric values (``PROMETHEUS_MULTIPROC_DIR``)."""
    return home / "run" / "metrics"


def read_heartbeats(folder: Path) -> dict[int, Heartbeat]:
    """Every readable heartbeat file by pid; a half-written or foreign file is skipped."""
    beats: dict[int, Heartbeat] = {}
    if not folder.is_dir():
        return beats
    for path in folder.glob("*.json"):
        try:
            beat = Heartbeat.parse(json.loads(path.read_text(encoding="utf-8")), path.stat().st_mtime)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        beats[beat.pid] = beat
    return beats


class Child:
    """A :class:`ChildSpec` and the process currently running it, if any."""

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0  # supervisor clock
        self.restarts = 0
        self.failures = 0  # consecutive short-lived runs, drives the backoff
        self.next_start: float | None = 0.0  # when to (re)start; None = not to be started
        self.stopping_since: float | None = None
        self.last_exit_code: int | None = None
        self.healthy: bool | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def state(self) -> ProcessState:
        if self.stopping_since is not None:
            return "stopping" if self.proc is not None else "stopped"
        if self.proc is not None:
            return "running"
        return "backoff" if self.next_start is not None else "stopped"


class Supervisor:
    """Keeps the fixed children and each pipeline's workers running; see the module docstring."""

    def __init__(
        self,
        *,
        home: Path,
        scaling: ScalingSettings,
        policies: Mapping[str, ScalingPolicy],
        worker_command: Callable[[str], Sequence[str]],
        fixed: Sequence[ChildSpec] = (),
        lag_of: Callable[[str], int | None] = lambda pipeline: None,
        worker_env: Mapping[str, str] | None = None,
        metrics: Metrics | None = None,
        notes: Sequence[str] = (),
        api_url: str | None = None,
        metrics_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.home = home
        self.scaling = scaling
        self.policies = dict(policies)
        self.autoscaler = Autoscaler(self.policies, clock=clock)
        self.worker_command = worker_command
        self.worker_env = dict(worker_env or {})
        self.lag_of = lag_of
        self.metrics = metrics or Metrics()
        self.notes = list(notes)
        self.api_url = api_url
        self.metrics_dir = metrics_dir  # PROMETHEUS_MULTIPROC_DIR of every child; None = not shared
        self.backoff = RestartBackoff(
            scaling.restart_initial_seconds, scaling.restart_max_seconds, scaling.restart_reset_seconds
        )
        self._clock = clock
        self.fixed = [Child(s) for s in fixed]
        self.workers: dict[str, list[Child]] = {p: [] for p in self.policies}
        self._retiring: list[Child] = []  # scaled-down workers draining after SIGTERM
        self._serial: dict[str, int] = dict.fromkeys(self.policies, 0)
        self._desired: dict[str, int] = {p: pol.min_replicas for p, pol in self.policies.items()}
        self._observed: dict[str, tuple[float | None, float | None, int | None, int]] = {}
        self._busy: dict[int, float] = {}  # worker pid → busy fraction of its latest fresh heartbeat
        self._changes: list[tuple[float, ScalingDecision]] = []  # (wall time, decision), scaling changes
        self._started_wall = time.time()
        self._last_control = -float("inf")
        self.log_dir = home / "logs"
        self.heartbeats = heartbeat_dir(home)

    # ----------------------------------------------------------------------------------------------
    # Lifecycle
    # ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the fixed children and each pipeline's minimum of workers; write the first view."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.heartbeats.mkdir(parents=True, exist_ok=True)
        if self.metrics_dir is not None:
            prepare_multiprocess_dir(self.metrics_dir)  # an earlier run's counters must not add up
        for child in self.fixed:
            self._spawn(child)
        for pipeline, policy in self.policies.items():
            self._scale_to(pipeline, policy.min_replicas)
        self.write_view()

    def run(self, stop: threading.Event) -> None:
        """Start, supervise until ``stop`` is set, then stop everything gracefully."""
        self.start()
        try:
            while not stop.is_set():
                self.step()
                stop.wait(POLL_SECONDS)
        finally:
            self.shutdown()

    def step(self) -> None:
        """One pass: reap exits, start due restarts, and run the control loop when it is due."""
        now = self._clock()
        self._supervise(now)
        if now - self._last_control >= self.scaling.interval_seconds:
            self._last_control = now
            self.control()

    def shutdown(self) -> None:
        """API (and other fixed children) first, so no new input arrives; then drain the workers."""
        log.info("supervisor stopping")
        fixed = [c for c in self.fixed if c.proc is not None]
        self._terminate_all(fixed)
        workers = [c for pool in self.workers.values() for c in pool] + self._retiring
        self._terminate_all([c for c in workers if c.proc is not None])
        for pool in self.workers.values():
            pool.clear()
        self._retiring.clear()
        self.write_view(state="stopped")
        log.info("supervisor stopped")

    # ----------------------------------------------------------------------------------------------
    # Processes
    # ----------------------------------------------------------------------------------------------

    def _spawn(self, child: Child) -> None:
        spec = child.spec
        path = self.log_dir / f"{spec.name}.log"
        env = {**os.environ, **(self.worker_env if spec.role == "worker" else {}), **spec.env}
        if self.metrics_dir is not None:
            env[MULTIPROC_ENV] = str(self.metrics_dir)
        with path.open("ab") as out:
            out.write(f"--- {datetime.now().isoformat(timespec='seconds')} start {spec.name}\n".encode())
            out.flush()
            try:
                child.proc = subprocess.Popen(  # noqa: S603 - the commands are ours, not user input
                    list(spec.command),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops us in order
                    preexec_fn=_death_signal_hook(),
                )
            except OSError as exc:
                # A missing executable is a crash like any other: log it and retry with backoff.
                log.error("cannot start %s (%s): %s", spec.name, " ".join(spec.command), exc)
                child.proc = None
                child.last_exit_code = None
                self._schedule_restart(child, self._clock(), uptime=0.0)
                return
        child.started_at = self._clock()
        child.next_start = None
        child.healthy = None
        log.info("started %s (pid %d)", spec.name, child.proc.pid, extra={"child": spec.name})

    def _supervise(self, now: float) -> None:
        for child in [*self.fixed, *(c for pool in self.workers.values() for c in pool)]:
            if child.proc is not None:
                code = child.proc.poll()
                if code is not None:
                    uptime = now - child.started_at
                    child.last_exit_code = code
                    self._reaped(child, child.pid)
                    child.proc = None
                    log.warning(
                        "%s exited with code %s after %.1f s", child.spec.name, code, uptime,
                        extra={"child": child.spec.name, "exit_code": code},
                    )  # fmt: skip
                    self._schedule_restart(child, now, uptime)
            if child.proc is None and child.next_start is not None and now >= child.next_start:
                child.restarts += 1
                self._spawn(child)
        # Scaled-down workers: reap when they have drained, SIGKILL when the grace period is over.
        for child in list(self._retiring):
            if child.proc is None or child.proc.poll() is not None:
                self._reaped(child, child.pid)
                if child.proc is not None:
                    child.last_exit_code = child.proc.returncode
                    child.proc = None
                self._retiring.remove(child)
            elif (
                child.stopping_since is not None
                and now - child.stopping_since > self.scaling.stop_grace_seconds
            ):
                log.warning(
                    "%s did not stop within %.0f s: SIGKILL", child.spec.name, self.scaling.stop_grace_seconds
                )
                child.proc.kill()

    def _schedule_restart(self, child: Child, now: float, uptime: float) -> None:
        child.failures = 1 if uptime >= self.backoff.reset_after else child.failures + 1
        delay = 0.0 if uptime >= self.backoff.reset_after else self.backoff.delay(child.failures)
        child.next_start = now + delay
        log.info("restarting %s in %.1f s", child.spec.name, delay, extra={"child": child.spec.name})

    def _terminate_all(self, children: Sequence[Child]) -> None:
        """SIGTERM each, wait up to the grace period for all, SIGKILL the rest."""
        for child in children:
            child.next_start = None
            child.stopping_since = self._clock()
            _signal(child, signal.SIGTERM)
        deadline = time.monotonic() + self.scaling.stop_grace_seconds
        for child in children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within the grace period: SIGKILL", child.spec.name)
                child.proc.kill()
                child.proc.wait()
            child.last_exit_code = child.proc.returncode
            self._reaped(child, child.pid)
            child.proc = None

    def _reaped(self, child: Child, pid: int | None) -> None:
        """Forget an exited child: a worker's heartbeat file would count a ghost replica, and its
        ``live*`` gauges (requests in flight, model served) would still be added up."""
        if pid is None:
            return
        if child.spec.role == "worker" and child.spec.pipeline:
            with contextlib.suppress(OSError):
                (self.heartbeats / f"{child.spec.pipeline}-{pid}.json").unlink()
        if self.metrics_dir is not None:
            with contextlib.suppress(OSError):
                mark_process_dead(pid, self.metrics_dir)

    # ----------------------------------------------------------------------------------------------
    # Control loop
    # ----------------------------------------------------------------------------------------------

    def control(self) -> list[ScalingDecision]:
        """Read heartbeats and lag, ask the autoscaler, apply, export metrics, write the view."""
        now_wall = time.time()
        beats = read_heartbeats(self.heartbeats)
        self._check_worker_health(beats, now_wall)
        self._check_api_health()
        decisions = []
        self._busy = {
            pid: b.busy_fraction
            for pid, b in beats.items()
            if now_wall - b.updated_at <= self.scaling.heartbeat_timeout_seconds
        }
        for pipeline in self.policies:
            pool = self.workers[pipeline]
            fresh = [
                b.busy_fraction
                for c in pool
                if c.pid is not None
                and (b := beats.get(c.pid)) is not None
                and now_wall - b.updated_at <= self.scaling.heartbeat_timeout_seconds
            ]
            utilization = sum(fresh) / len(fresh) if fresh else None
            utilization_max = max(fresh) if fresh else None
            lag = self._lag(pipeline)
            decision = self.autoscaler.decide(pipeline, len(pool), utilization=utilization, lag=lag)
            decisions.append(decision)
            self._observed[pipeline] = (utilization, utilization_max, lag, len(fresh))
            self._desired[pipeline] = decision.desired
            if decision.direction != "none":
                self._changes.append((now_wall, decision))
                del self._changes[:-50]
            self._scale_to(pipeline, decision.desired)
            self._export(decision, utilization, utilization_max, lag)
        self.write_view()
        return decisions

    def _lag(self, pipeline: str) -> int | None:
        try:
            return self.lag_of(pipeline)
        except Exception as exc:  # a bus hiccup must not stop the supervisor; scale on utilisation
            log.warning("cannot read the lag of %s: %s", pipeline, exc)
            return None

    def _check_worker_health(self, beats: Mapping[int, Heartbeat], now_wall: float) -> None:
        """A worker silent for longer than the heartbeat timeout is killed (and so restarted)."""
        timeout = self.scaling.heartbeat_timeout_seconds
        now = self._clock()
        for pool in self.workers.values():
            for child in pool:
                if child.proc is None:
                    continue
                beat = beats.get(child.proc.pid)
                if beat is not None:
                    child.healthy = now_wall - beat.updated_at <= timeout
                    silent = not child.healthy
                else:
                    child.healthy = None  # no heartbeat yet: starting up
                    silent = now - child.started_at > timeout
                if silent:
                    log.warning("%s: no heartbeat for over %.0f s, restarting it", child.spec.name, timeout)
                    child.proc.kill()

    def _check_api_health(self) -> None:
        for child in self.fixed:
            if child.spec.health_url is None or child.proc is None:
                continue
            import httpx

            try:
                child.healthy = httpx.get(child.spec.health_url, timeout=1.0).status_code == 200
            except httpx.HTTPError:
                child.healthy = False

    def _scale_to(self, pipeline: str, desired: int) -> None:
        pool = self.workers[pipeline]
        while len(pool) < desired:
            self._serial[pipeline] += 1
            spec = ChildSpec(
                name=f"worker-{pipeline}-{self._serial[pipeline]}",
                role="worker",
                command=tuple(self.worker_command(pipeline)),
                pipeline=pipeline,
            )
            child = Child(spec)
            pool.append(child)
            self._spawn(child)
        while len(pool) > desired:
            child = pool.pop()  # the newest replica goes first
            child.next_start = None
            child.stopping_since = self._clock()
            if child.proc is not None:
                log.info("stopping %s (scale down)", child.spec.name)
                _signal(child, signal.SIGTERM)
                self._retiring.append(child)

    def _export(
        self, d: ScalingDecision, utilization: float | None, utilization_max: float | None, lag: int | None
    ) -> None:
        m = self.metrics
        m.replicas.labels(d.pipeline).set(len(self.workers[d.pipeline]))
        m.desired_replicas.labels(d.pipeline).set(d.desired)
        policy = self.policies[d.pipeline]
        m.min_replicas.labels(d.pipeline).set(policy.min_replicas)
        m.max_replicas.labels(d.pipeline).set(policy.max_replicas)
        m.scaling_decisions.labels(d.pipeline, d.direction).inc()
        if utilization is not None and utilization_max is not None:
            m.worker_utilization.labels(pipeline=d.pipeline, kind="stream", stat="mean").set(utilization)
            m.worker_utilization.labels(pipeline=d.pipeline, kind="stream", stat="max").set(utilization_max)
        if lag is not None:
            m.queue_lag.labels(d.pipeline).set(lag)

    # ----------------------------------------------------------------------------------------------
    # The system view
    # ----------------------------------------------------------------------------------------------

    def view(self, state: str = "running") -> SystemView:
        now = self._clock()
        children = [*self.fixed, *(c for pool in self.workers.values() for c in pool), *self._retiring]
        processes = [
            ProcessView(
                name=c.spec.name,
                role=c.spec.role,
                pipeline=c.spec.pipeline,
                pid=c.pid,
                state=c.state,
                restarts=c.restarts,
                uptime_seconds=round(now - c.started_at, 1) if c.proc is not None else None,
                last_exit_code=c.last_exit_code,
                healthy=c.healthy,
                utilization=self._busy.get(c.pid) if c.spec.role == "worker" and c.pid else None,
                log=str(self.log_dir / f"{c.spec.name}.log"),
            )
            for c in children
        ]
        pipelines = {}
        for p, policy in self.policies.items():
            utilization, utilization_max, lag, beats = self._observed.get(p, (None, None, None, 0))
            pipelines[p] = PipelineView(
                replicas=len(self.workers[p]),
                desired=self._desired[p],
                min_replicas=policy.min_replicas,
                max_replicas=policy.max_replicas,
                lag=lag,
                utilization=utilization,
                utilization_max=utilization_max,
                heartbeats=beats,
            )
        decisions = [
            DecisionView(at=at, **{k: v for k, v in d.as_dict().items() if k != "time"})
            for at, d in self._changes[-20:]
        ]
        return SystemView(
            state="stopped" if state == "stopped" else "running",
            supervisor_pid=os.getpid(),
            started_at=self._started_wall,
            updated_at=time.time(),
            interval_seconds=self.scaling.interval_seconds,
            api_url=self.api_url,
            processes=processes,
            pipelines=pipelines,
            decisions=decisions,
            notes=self.notes,
        )

    def write_view(self, state: str = "running") -> None:
        try:
            write_view(self.home, self.view(state))
        except OSError as exc:
            log.warning("cannot write the system view: %s", exc)


def _signal(child: Child, sig: signal.Signals) -> None:
    if child.proc is not None and child.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(sig)


_PR_SET_PDEATHSIG = 1
_prctl: Any = None


def _death_signal_hook() -> Callable[[], None] | None:
    """Linux: a pre-exec hook that SIGTERMs the child when the supervisor dies (no orphans).

    libc is loaded here, in the parent: the hook itself only makes one system call, which is safe
    between fork and exec.
    """
    global _prctl
    if sys.platform != "linux":
        return None
    if _prctl is None:
        import ctypes

        try:
            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            return None
    return _die_with_parent


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


__all__ = [
    "Child",
    "ChildSpec",
    "Heartbeat",
    "RestartBackoff",
    "Supervisor",
    "heartbeat_dir",
    "multiprocess_metrics_dir",
    "read_heartbeats",
]
