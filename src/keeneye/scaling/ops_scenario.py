"""``keeneye loadtest --scenario ops``: a rising load on a running ``keeneye up``, the system watched.

The load is :mod:`keeneye.scaling.loadtest`'s (Locust over HTTP, or the ingestion path onto the bus),
rising in steps. Beside it a :class:`SystemWatcher` looks at the running system every ``interval``
seconds, through the API only (so it works against any ``keeneye up`` it can reach):

* ``GET /v1/system`` — the pipeline's worker replicas (running, desired, min and max), each worker's
  utilisation (busy fraction over 30 s) and the input-topic lag;
* ``GET /metrics`` — the busiest API process's utilisation (``keeneye_worker_utilization{kind="api"}``);
* ``GET /v1/alerts`` — the alerts pending and firing.

After the ramp the watcher goes on for a cool-down of up to ``cooldown_seconds``, ended early once the
system is at rest (replicas back at their minimum, no alert firing, no lag), so a run shows the
scale-back and the alerts resolving too.

The result (:class:`OpsReport`) is a timeline with one row per step of the ramp and one per
``step_seconds`` of the cool-down — offered and served requests/s, p95, replicas, utilisation per
replica, the alerts pending and firing, the refusals (429 from the flood guard, 503 from a saturated
API) — the raw looks, and the events read from them (replicas changing, alerts going pending, firing,
resolved). :func:`write_outputs` writes it as ``ops.json`` and ``ops.png``.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx

from keeneye.domain import JsonObject
from keeneye.monitoring.alerts.source import parse_exposition
from keeneye.scaling.loadtest import LoadReport, StepPlan, StepReport

log = logging.getLogger(__name__)

Phase = Literal["ramp", "cooldown"]
UTILIZATION_METRIC = "keeneye_worker_utilization"
LOAD_THRESHOLD = 0.8  # the load rules' threshold (WorkerLoadHigh/Critical), drawn on the plot
REFUSALS = ("429", "503")


# --------------------------------------------------------------------------------------------------
# Looking at the running system
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Look:
    """One look at the running system, ``t`` seconds into the scenario (``None``: not known)."""

    t: float
    replicas: int | None = None  # the pipeline's worker replicas (running or restarting)
    desired: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    workers_alive: int | None = None  # worker processes alive, scaled-down ones still draining included
    lag: int | None = None
    utilization: dict[str, float] = field(default_factory=dict)  # worker name → busy fraction
    api_utilization: float | None = None  # the busiest API process
    pending: tuple[str, ...] = ()  # alerts as "Rule[kind]" (the kind label when the alert has one)
    firing: tuple[str, ...] = ()
    error: str | None = None

    @property
    def utilization_max(self) -> float | None:
        return max(self.utilization.values()) if self.utilization else None

    def at_rest(self) -> bool:
        """Back where it started: replicas at their minimum, no alert firing, nothing queued.

        A pending alert does not count: a latency rule's 5-minute window still holds the load's
        answers minutes after it, and pending is a condition not (yet) confirmed."""
        return (
            self.error is None
            and self.replicas is not None
            and self.replicas == self.min_replicas
            and not self.firing
            and not self.lag
        )


def alert_key(alert: JsonObject) -> str:
    labels = alert.get("labels") or {}
    kind = labels.get("kind") if isinstance(labels, dict) else None
    return f"{alert.get('rule')}[{kind}]" if kind else str(alert.get("rule"))


class SystemWatcher:
    """Looks at one pipeline of a running ``keeneye up`` through its API, now or every ``interval``."""

    def __init__(
        self,
        base_url: str,
        pipeline: str,
        *,
        api_key: str | None = None,
        interval: float = 2.0,
        timeout: float = 10.0,  # a loaded API answers slowly; a look that times out is left out
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.pipeline = pipeline
        self.interval = interval
        self.clock = clock
        self.t0 = clock()
        self.looks: list[Look] = []
        headers = {"x-api-key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def look(self) -> Look:
        """One look; never raises (what could not be read is ``None`` and ``error`` says why)."""
        t = round(self.clock() - self.t0, 2)
        errors: list[str] = []
        system: dict[str, Any] = {}
        try:
            system = self._get("/v1/system")
            if not system.get("running"):
                errors.append(f"/v1/system: {system.get('detail')}")
        except (httpx.HTTPError, ValueError) as exc:
            errors.append(f"/v1/system: {exc or type(exc).__name__}")
        pipeline: dict[str, Any] = ((system.get("system") or {}).get("pipelines") or {}).get(
            self.pipeline
        ) or {}
        workers = [
            p
            for p in (system.get("system") or {}).get("processes") or []
            if p.get("role") == "worker" and p.get("pipeline") == self.pipeline
        ]
        pending: list[str] = []
        firing: list[str] = []
        try:
            for alert in self._get("/v1/alerts").get("alerts", []):
                labels = alert.get("labels") or {}
                if labels.get("pipeline") not in (None, self.pipeline):
                    continue
                (firing if alert.get("state") == "firing" else pending).append(alert_key(alert))
        except (httpx.HTTPError, ValueError) as exc:
            errors.append(f"/v1/alerts: {exc or type(exc).__name__}")
        api_utilization = None
        try:
            api_utilization = self._api_utilization()
        except (httpx.HTTPError, ValueError) as exc:
            errors.append(f"/metrics: {exc or type(exc).__name__}")
        return Look(
            t=t,
            replicas=pipeline.get("replicas"),
            desired=pipeline.get("desired"),
            min_replicas=pipeline.get("min_replicas"),
            max_replicas=pipeline.get("max_replicas"),
            workers_alive=sum(1 for p in workers if p.get("pid")) if system.get("system") else None,
            lag=pipeline.get("lag"),
            utilization={
                str(p["name"]): float(p["utilization"]) for p in workers if p.get("utilization") is not None
            },
            api_utilization=api_utilization,
            pending=tuple(sorted(set(pending))),
            firing=tuple(sorted(set(firing))),
            error="; ".join(errors) or None,
        )

    def _get(self, path: str) -> dict[str, Any]:
        response = self._http.get(path)
        response.raise_for_status()
        return dict(response.json())

    def _api_utilization(self) -> float | None:
        response = self._http.get("/metrics")
        response.raise_for_status()
        values = [
            s.value
            for s in parse_exposition(response.text)
            if s.name == UTILIZATION_METRIC
            and s.labels.get("kind") == "api"
            and s.labels.get("stat") == "max"
            and s.labels.get("pipeline") == self.pipeline
        ]
        return max(values) if values else None

    # -- in the background ------------------------------------------------------------------------

    def start(self) -> None:
        """Look now, then every ``interval`` seconds in a thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="ops-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            started = self.clock()
            self.looks.append(self.look())
            if self._stop.wait(max(0.0, self.interval - (self.clock() - started))):
                return

    def latest(self) -> Look | None:
        return self.looks[-1] if self.looks else None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 15)
        self.looks.append(self.look())  # the state at the very end
        self._http.close()


# --------------------------------------------------------------------------------------------------
# The timeline: pure
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimelineRow:
    """One step of the ramp, or one ``step_seconds`` of the cool-down, with what the looks saw in it."""

    phase: Phase
    step: int  # 1-based within its phase
    start: float  # seconds into the scenario
    end: float
    offered_rps: float  # 0 in the cool-down
    served_rps: float | None  # successes started in the step per second (None in the cool-down)
    p95_ms: float | None
    requests: int
    refused_429: int  # the flood guard: too many in flight or too fast for one client
    refused_503: int  # the API saturated (every slot taken) or a backend down
    other_errors: int
    replicas: int | None  # at the row's last look
    replicas_peak: int | None  # the most seen in the row
    desired: int | None
    lag: int | None
    utilization: dict[str, float]  # worker → busy fraction at the row's last look
    utilization_max: float | None  # the busiest worker over the row
    api_utilization: float | None  # the busiest API process over the row
    pending: tuple[str, ...]  # alerts seen pending in the row
    firing: tuple[str, ...]  # alerts seen firing in the row


def _peak(values: Iterable[float | int | None]) -> Any:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _row(
    phase: Phase, step: int, start: float, end: float, looks: Sequence[Look], load: StepReport | None
) -> TimelineRow:
    inside = [lk for lk in looks if start <= lk.t < end and lk.error is None]
    last = inside[-1] if inside else None
    errors = dict(load.errors) if load is not None else {}
    return TimelineRow(
        phase=phase,
        step=step,
        start=round(start, 2),
        end=round(end, 2),
        offered_rps=load.offered_rps if load is not None else 0.0,
        served_rps=load.achieved_rps if load is not None else None,
        p95_ms=load.p95_ms if load is not None else None,
        requests=load.requests if load is not None else 0,
        refused_429=errors.get("429", 0),
        refused_503=errors.get("503", 0),
        other_errors=sum(v for k, v in errors.items() if k not in REFUSALS),
        replicas=last.replicas if last else None,
        replicas_peak=_peak(lk.replicas for lk in inside),
        desired=last.desired if last else None,
        lag=last.lag if last else None,
        utilization=dict(last.utilization) if last else {},
        utilization_max=_peak(lk.utilization_max for lk in inside),
        api_utilization=_peak(lk.api_utilization for lk in inside),
        pending=tuple(sorted({a for lk in inside for a in lk.pending})),
        firing=tuple(sorted({a for lk in inside for a in lk.firing})),
    )


def build_timeline(
    load: LoadReport,
    step_starts: Sequence[float],
    ramp_end: float,
    end: float,
    looks: Sequence[Look],
) -> list[TimelineRow]:
    """Rows for the ramp's steps (step ``i`` from its announced start to the next one's, the last to
    ``ramp_end``) and for the cool-down, in ``load.step_seconds`` slices from ``ramp_end`` to ``end``."""
    rows: list[TimelineRow] = []
    for i, step in enumerate(load.steps):
        if i >= len(step_starts):
            break  # never announced: the run ended before it
        stop = step_starts[i + 1] if i + 1 < len(step_starts) else ramp_end
        rows.append(_row("ramp", i + 1, step_starts[i], stop, looks, step))
    n = max(0, math.ceil((end - ramp_end) / load.step_seconds - 1e-9))
    for i in range(n):
        start = ramp_end + i * load.step_seconds
        rows.append(_row("cooldown", i + 1, start, min(end, start + load.step_seconds) + 1e-6, looks, None))
    return rows


@dataclass(frozen=True)
class Event:
    t: float
    what: str


def events(looks: Sequence[Look]) -> list[Event]:
    """What changed between consecutive readable looks: replicas, alerts pending/firing/resolved."""
    out: list[Event] = []
    before: Look | None = None
    for lk in looks:
        if lk.error is not None:
            continue
        if before is None:
            out.append(Event(lk.t, f"replicas {lk.replicas} (min {lk.min_replicas}, max {lk.max_replicas})"))
            for a in lk.pending:
                out.append(Event(lk.t, f"{a} pending"))
            for a in lk.firing:
                out.append(Event(lk.t, f"{a} firing"))
            before = lk
            continue
        if lk.replicas != before.replicas:
            out.append(Event(lk.t, f"replicas {before.replicas} → {lk.replicas}"))
        for a in sorted(set(lk.pending) - set(before.pending) - set(before.firing)):
            out.append(Event(lk.t, f"{a} pending"))
        for a in sorted(set(lk.firing) - set(before.firing)):
            out.append(Event(lk.t, f"{a} firing"))
        for a in sorted(set(before.firing) - set(lk.firing) - set(lk.pending)):
            out.append(Event(lk.t, f"{a} resolved"))
        for a in sorted(set(before.pending) - set(lk.pending) - set(lk.firing)):
            out.append(Event(lk.t, f"{a} no longer pending (cleared before firing)"))
        before = lk
    return out


# --------------------------------------------------------------------------------------------------
# The scenario
# --------------------------------------------------------------------------------------------------


@dataclass
class OpsReport:
    target: str
    pipeline: str
    url: str
    started_at: str
    step_seconds: float
    interval: float
    ramp_seconds: float
    seconds: float  # ramp and cool-down
    at_rest: bool  # the last look found the system back at rest
    load: LoadReport
    rows: list[TimelineRow]
    looks: list[Look]

    @property
    def events(self) -> list[Event]:
        return events(self.looks)

    @property
    def replicas_peak(self) -> int | None:
        known = [lk.replicas for lk in self.looks if lk.error is None and lk.replicas is not None]
        return max(known) if known else None

    @property
    def bounds(self) -> tuple[int | None, int | None]:
        """The pipeline's (min, max) replicas, as the supervisor reported them."""
        known = [lk for lk in self.looks if lk.min_replicas is not None]
        return (known[-1].min_replicas, known[-1].max_replicas) if known else (None, None)

    def as_dict(self) -> JsonObject:
        lo, hi = self.bounds
        return {
            "scenario": "ops",
            "target": self.target,
            "pipeline": self.pipeline,
            "url": self.url,
            "started_at": self.started_at,
            "step_seconds": self.step_seconds,
            "interval": self.interval,
            "ramp_seconds": self.ramp_seconds,
            "seconds": self.seconds,
            "min_replicas": lo,
            "max_replicas": hi,
            "replicas_peak": self.replicas_peak,
            "at_rest": self.at_rest,
            "truncated": self.load.truncated,
            "timeline": [asdict(r) for r in self.rows],
            "events": [asdict(e) for e in self.events],
            "looks": [asdict(lk) for lk in self.looks],
            "load": self.load.as_dict(),
        }


LoadRun = Callable[[Callable[[int, float], None]], LoadReport]  # the load, given the step callback


def run_ops(
    plan: StepPlan,
    *,
    load: LoadRun,
    watcher: SystemWatcher,
    target: str,
    cooldown_seconds: float,
    say: Callable[[str], None] = lambda line: None,
) -> OpsReport:
    """Run ``load`` (given the step callback) while ``watcher`` looks every interval, then watch the
    cool-down; ``say`` gets a line per step and per event as they happen."""
    clock = watcher.clock
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    step_starts: list[float] = []
    told = 0

    def tell_events() -> None:
        nonlocal told
        happened = events(list(watcher.looks))
        for e in happened[told:]:
            say(f"  {e.t:7.1f} s  {e.what}")
        told = len(happened)

    def on_step(index: int, rate: float) -> None:
        step_starts.append(round(clock() - watcher.t0, 2))
        tell_events()
        say(f"step {index + 1}/{len(plan.rates)}: {rate:g} req/s for {plan.step_seconds:g} s")

    watcher.t0 = clock()
    watcher.start()
    try:
        report = load(on_step)
        ramp_end = clock() - watcher.t0
        say(f"ramp over after {ramp_end:.0f} s; watching the cool-down (up to {cooldown_seconds:g} s) …")
        while clock() - watcher.t0 < ramp_end + cooldown_seconds:
            time.sleep(min(watcher.interval, 1.0))
            tell_events()
            last = watcher.latest()
            if last is not None and last.t > ramp_end and last.at_rest():
                say("the system is back at rest")
                break
    finally:
        watcher.stop()
    end = clock() - watcher.t0
    tell_events()
    looks = list(watcher.looks)
    readable = [lk for lk in looks if lk.error is None]
    return OpsReport(
        target=target,
        pipeline=report.pipeline,
        url=report.url,
        started_at=started_at,
        step_seconds=plan.step_seconds,
        interval=watcher.interval,
        ramp_seconds=round(ramp_end, 2),
        seconds=round(end, 2),
        at_rest=bool(readable) and readable[-1].at_rest(),
        load=report,
        rows=build_timeline(report, step_starts, ramp_end, end, looks),
        looks=looks,
    )


# --------------------------------------------------------------------------------------------------
# Output: ops.json and ops.png
# --------------------------------------------------------------------------------------------------


def write_outputs(report: OpsReport, folder: Path) -> list[Path]:
    """``ops.json`` (everything) and ``ops.png`` (the plot) in ``folder``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "ops.json"
    data.write_text(json.dumps(report.as_dict(), indent=2), encoding="utf-8")
    image = folder / "ops.png"
    plot(report, image)
    return [data, image]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless: never opens a window
    import matplotlib.pyplot as plt

    return plt


def plot(report: OpsReport, path: Path) -> None:
    """Four panels over time: load (offered, served, refused; p95), replicas, utilisation per replica,
    and the alerts' pending and firing spans."""
    plt = _pyplot()
    fig, axes = plt.subplots(4, 1, figsize=(11, 11), sharex=True, height_ratios=[3, 2, 3, 2])
    ramp = [r for r in report.rows if r.phase == "ramp"]

    ax = axes[0]
    edges = [r.start for r in ramp] + ([ramp[-1].end] if ramp else [])
    if ramp:
        ax.stairs([r.offered_rps for r in ramp], edges, label="offered req/s", color="tab:blue")
        ax.stairs([r.served_rps or 0.0 for r in ramp], edges, label="served req/s", color="tab:green")
        refused = [(r.refused_429 + r.refused_503) / max(r.end - r.start, 1e-9) for r in ramp]
        if any(refused):
            ax.stairs(refused, edges, label="refused (429 + 503) /s", color="tab:red")
        p95 = ax.twinx()
        p95.plot(
            [(r.start + r.end) / 2 for r in ramp],
            [r.p95_ms if r.p95_ms is not None else math.nan for r in ramp],
            "o--",
            color="tab:gray",
            label="p95 ms",
        )
        p95.set_ylabel("p95 ms")
        p95.legend(loc="upper right", fontsize=8)
    ax.set_ylabel("requests/s")
    ax.set_title(f"{report.pipeline} · {report.target}: rising load, then the cool-down")
    ax.legend(loc="upper left", fontsize=8)

    looks = [lk for lk in report.looks if lk.error is None]
    t = [lk.t for lk in looks]
    ax = axes[1]
    ax.step(t, [lk.replicas for lk in looks], where="post", label="replicas", color="tab:blue")
    ax.step(t, [lk.desired for lk in looks], where="post", label="desired", color="tab:orange", ls=":")
    lo, hi = report.bounds
    for bound, name in ((lo, "min"), (hi, "max")):
        if bound is not None:
            ax.axhline(bound, color="tab:red" if name == "max" else "tab:gray", ls="--", lw=1, label=name)
    ax.set_ylabel("worker replicas")
    ax.set_ylim(0, (hi or report.replicas_peak or 1) + 1)
    ax.legend(loc="upper left", fontsize=8)
    lag = ax.twinx()
    lag.plot(
        t, [lk.lag if lk.lag is not None else math.nan for lk in looks], color="tab:gray", lw=1, label="lag"
    )
    lag.set_ylabel("queued (lag)")
    lag.set_ylim(bottom=0)
    lag.legend(loc="upper right", fontsize=8)

    ax = axes[2]
    for name in dict.fromkeys(n for lk in looks for n in lk.utilization):
        ax.plot(t, [lk.utilization.get(name, math.nan) for lk in looks], lw=1, label=name)
    ax.plot(
        t,
        [lk.api_utilization if lk.api_utilization is not None else math.nan for lk in looks],
        color="black",
        lw=1.5,
        ls="-.",
        label="api (busiest)",
    )
    ax.axhline(LOAD_THRESHOLD, color="tab:red", ls="--", lw=1, label="alert threshold 0.8")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("utilisation")
    ax.legend(loc="upper left", fontsize=7, ncol=3)

    ax = axes[3]
    keys = sorted({a for lk in looks for a in (*lk.pending, *lk.firing)})
    for y, key in enumerate(keys):
        for state, colour in (("pending", "tab:orange"), ("firing", "tab:red")):
            spans = _spans(looks, key, state)
            if spans:
                ax.broken_barh(spans, (y - 0.35, 0.7), color=colour, label=state if y == 0 else None)
    ax.set_yticks(range(len(keys)), keys, fontsize=8)
    ax.set_ylim(-0.8, max(len(keys), 1) - 0.2)
    ax.set_ylabel("alerts")
    if keys:
        ax.legend(loc="upper left", fontsize=8)
    ramp_end = report.ramp_seconds
    for a in axes:
        a.axvline(ramp_end, color="grey", ls=":", lw=1)
        a.grid(alpha=0.3)
    axes[-1].set_xlabel("seconds (dotted line: the load ends)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _spans(looks: Sequence[Look], key: str, state: str) -> list[tuple[float, float]]:
    """(start, width) of the runs of consecutive looks with ``key`` in ``state``."""
    spans: list[tuple[float, float]] = []
    start: float | None = None
    for i, lk in enumerate(looks):
        inside = key in (lk.pending if state == "pending" else lk.firing)
        if inside and start is None:
            start = lk.t
        if start is not None and (not inside or i == len(looks) - 1):
            spans.append((start, max(lk.t - start, 0.5)))
            start = None
    return spans


__all__ = [
    "Event",
    "LoadRun",
    "Look",
    "OpsReport",
    "SystemWatcher",
    "TimelineRow",
    "build_timeline",
    "events",
    "plot",
    "run_ops",
    "write_outputs",
]
