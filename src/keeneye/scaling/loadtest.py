"""Rising-intensity load tests: HTTP (Locust, headless, in-process) and the message bus.

The load rises in steps: ``start`` requests/s for ``step_seconds``, then ``start + step``, … up to
``max`` (always offered last). Each step reports the offered and achieved rate, latency percentiles
and errors by status, so a run shows where the system stops keeping up, and — with ``keeneye up``
running — the autoscaler adding workers and the load alert firing.

Bounded on purpose: a run refuses non-loopback targets unless ``allow_remote`` is set, and a plan
over :data:`MAX_TOTAL_SECONDS` or :data:`MAX_TOTAL_REQUESTS` is refused before anything is sent.

Locust runs on gevent, which must monkey-patch the standard library before anything imports ssl
(keeneye's own imports do: rasterio → boto3 → urllib3). So :func:`run_http` runs Locust in a child
Python that patches first and then runs this module (:data:`_CHILD_BOOT`); the child streams its step
announcements and the report back as JSON lines. No other keeneye process ever imports gevent.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import random
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np

from keeneye.domain import ConfigError, JsonObject, KeeneyeError

log = logging.getLogger(__name__)

MAX_TOTAL_SECONDS = 3600.0
MAX_TOTAL_REQUESTS = 1_000_000
MAX_RPS = 20_000.0
MAX_USERS = 5000  # Locust users (greenlets); each offers at most 1 request/s when the rate allows

Target = Literal["http", "bus"]


# --------------------------------------------------------------------------------------------------
# The plan: pure step math
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepPlan:
    start: float
    step: float
    step_seconds: float
    max: float

    def __post_init__(self) -> None:
        if self.start <= 0 or self.max <= 0:
            raise ConfigError(
                "--start/--max", "rates must be above 0 requests/s", fix="e.g. --start 5 --max 50"
            )
        if self.start > self.max:
            raise ConfigError(
                "--start", f"{self.start:g} is above --max {self.max:g}", fix="lower --start or raise --max"
            )
        if self.step < 0 or (self.step == 0 and self.start != self.max):
            raise ConfigError("--step", "must be above 0 to rise from --start to --max", fix="e.g. --step 5")
        if self.step_seconds <= 0:
            raise ConfigError("--step-seconds", "must be above 0", fix="e.g. --step-seconds 30")
        if self.max > MAX_RPS:
            raise ConfigError(
                "--max", f"{self.max:g} requests/s is over the cap of {MAX_RPS:g}", fix="lower --max"
            )
        if self.total_seconds > MAX_TOTAL_SECONDS:
            raise ConfigError(
                "--step-seconds",
                f"the plan runs {self.total_seconds:g} s, over the cap of {MAX_TOTAL_SECONDS:g} s",
                fix="use fewer or shorter steps (a larger --step or a smaller --step-seconds)",
            )
        if self.expected_requests > MAX_TOTAL_REQUESTS:
            raise ConfigError(
                "--max",
                f"the plan sends about {self.expected_requests:,} requests, over the cap of "
                f"{MAX_TOTAL_REQUESTS:,}",
                fix="lower --max or --step-seconds",
            )

    @property
    def rates(self) -> list[float]:
        """The offered rate of each step: start, start + step, …, and max as the last step."""
        if self.step == 0:
            return [self.start]
        n = math.floor((self.max - self.start) / self.step + 1e-9) + 1
        rates = [round(self.start + i * self.step, 6) for i in range(n)]
        if rates[-1] < self.max - 1e-9:
            rates.append(self.max)
        return rates

    @property
    def total_seconds(self) -> float:
        return len(self.rates) * self.step_seconds

    @property
    def expected_requests(self) -> int:
        return math.ceil(sum(r * self.step_seconds for r in self.rates))

    def step_at(self, elapsed: float) -> int | None:
        """The step index at ``elapsed`` seconds into the run; ``None`` once the plan is over."""
        if elapsed < 0:
            return 0
        index = int(elapsed // self.step_seconds)
        return index if index < len(self.rates) else None

    def rate_at(self, elapsed: float) -> float | None:
        index = self.step_at(elapsed)
        return None if index is None else self.rates[index]

    def users_for(self, rate: float) -> int:
        """Locust users for ``rate``: one per request/s (so a user waits ≥ 1 s between requests)."""
        return min(MAX_USERS, max(1, math.ceil(rate)))


# --------------------------------------------------------------------------------------------------
# Samples and the report
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One request: when it started (seconds into the run), how long it took, how it ended."""

    started: float
    seconds: float
    status: str  # HTTP status code as text, "ok" for a bus publish, or an error class name

    @property
    def ok(self) -> bool:
        return self.status == "ok" or (self.status.isdigit() and 200 <= int(self.status) < 300)


@dataclass
class StepReport:
    step: int
    offered_rps: float
    seconds: float
    requests: int
    achieved_rps: float  # successful requests started in the step, per second of the step
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    errors: dict[str, int] = field(default_factory=dict)
    lag: int | None = None  # bus target: unacked messages of the .in topic at the end of the step


@dataclass
class LoadReport:
    target: Target
    pipeline: str
    url: str
    step_seconds: float
    steps: list[StepReport]
    truncated: str | None = None  # why the run ended before the plan did, if it did

    @property
    def total_requests(self) -> int:
        return sum(s.requests for s in self.steps)

    @property
    def total_errors(self) -> int:
        return sum(sum(s.errors.values()) for s in self.steps)

    def as_dict(self) -> JsonObject:
        return {
            "target": self.target,
            "pipeline": self.pipeline,
            "url": self.url,
            "step_seconds": self.step_seconds,
            "total_requests": self.total_requests,
            "total_errors": self.total_errors,
            "truncated": self.truncated,
            "steps": [asdict(s) for s in self.steps],
        }


def summarize(plan: StepPlan, samples: Sequence[Sample], lags: Sequence[int | None] = ()) -> list[StepReport]:
    """Per-step figures; a sample belongs to the step in which it started. Latencies of successes."""
    by_step: list[list[Sample]] = [[] for _ in plan.rates]
    for s in samples:
        index = plan.step_at(s.started)
        if index is not None:
            by_step[index].append(s)
    reports = []
    for i, (rate, items) in enumerate(zip(plan.rates, by_step, strict=True)):
        ok = np.array([s.seconds * 1000 for s in items if s.ok], dtype=np.float64)
        pct = [float(round(v, 2)) for v in np.percentile(ok, [50, 95, 99])] if ok.size else [None] * 3
        errors = Counter(s.status for s in items if not s.ok)
        reports.append(
            StepReport(
                step=i + 1,
                offered_rps=rate,
                seconds=plan.step_seconds,
                requests=len(items),
                achieved_rps=round(ok.size / plan.step_seconds, 2),
                p50_ms=pct[0],
                p95_ms=pct[1],
                p99_ms=pct[2],
                errors=dict(sorted(errors.items())),
                lag=lags[i] if i < len(lags) else None,
            )
        )
    return reports


# --------------------------------------------------------------------------------------------------
# Guards and payloads
# --------------------------------------------------------------------------------------------------


def is_loopback_host(host: str) -> bool:
    if host in {"localhost", ""}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def ensure_local(url: str, *, allow_remote: bool, what: str = "--url") -> None:
    """Refuse to load anything but this machine unless the user says so explicitly."""
    hosts = [urlsplit(part if "://" in part else f"x://{part}").hostname or "" for part in url.split(",")]
    remote = [h for h in hosts if not is_loopback_host(h)]
    if remote and not allow_remote:
        raise ConfigError(
            what,
            f"{remote[0]} is not this machine; a load test could harm a shared system",
            fix="pass --allow-remote if you own that system and mean to load it",
        )


class JpegSource:
    """Distinct JPEGs, cheaply: a small pool of noise images, each request's bytes made unique by a
    JPEG comment segment carrying a counter (so the content-addressed cache never hits)."""

    def __init__(self, pool: int = 8, size: int = 64, seed: int = 0) -> None:
        import cv2

        rng = np.random.default_rng(seed)
        self._pool: list[bytes] = []
        for _ in range(pool):
            img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            ok, buf = cv2.imencode(".jpg", img)
            if not ok:  # pragma: no cover - OpenCV always encodes a uint8 image
                raise KeeneyeError("OpenCV could not encode a JPEG")
            self._pool.append(bytes(buf))
        self._counter = random.Random(seed).getrandbits(32) << 20  # noqa: S311 - not a secret

    def next(self) -> bytes:
        self._counter += 1
        base = self._pool[self._counter % len(self._pool)]
        comment = f"keeneye-loadtest {self._counter}".encode()
        segment = b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment
        return base[:2] + segment + base[2:]  # right after SOI


# --------------------------------------------------------------------------------------------------
# HTTP: Locust
# --------------------------------------------------------------------------------------------------


_CHILD_BOOT = (
    "from gevent import monkey\n"
    "monkey.patch_all()\n"
    "import runpy\n"
    "runpy.run_module('keeneye.scaling.loadtest', run_name='__main__', alter_sys=True)\n"
)
_LINE = "keeneye-loadtest "  # prefix of the child's protocol lines on stdout (Locust logs to stderr)


def run_http(
    plan: StepPlan,
    *,
    url: str,
    pipeline: str,
    asynchronous: bool = False,
    api_key: str | None = None,
    on_step: Callable[[int, float], None] | None = None,
    max_requests: int = MAX_TOTAL_REQUESTS,
    image_size: int = 64,
) -> LoadReport:
    """Offer ``plan`` to ``url`` with Locust (a LoadTestShape for the steps, a FastHttpUser posting
    raw JPEG bodies to ``/v1/pipelines/<pipeline>/predict`` or ``…/observations``), in a child
    process patched for gevent before it imports anything else."""
    request = {
        "plan": asdict(plan),
        "url": url,
        "pipeline": pipeline,
        "asynchronous": asynchronous,
        "api_key": api_key,
        "max_requests": max_requests,
        "image_size": image_size,
    }
    child = subprocess.Popen(  # noqa: S603 - our own interpreter running our own module
        [sys.executable, "-c", _CHILD_BOOT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    report: dict[str, Any] | None = None  # the child's JSON, as LoadReport.as_dict wrote it
    failure: dict[str, Any] | None = None
    try:
        child.stdin.write(json.dumps(request))
        child.stdin.close()
        for line in child.stdout:
            if not line.startswith(_LINE):
                continue
            message = json.loads(line[len(_LINE) :])
            if "step" in message and on_step is not None:
                on_step(int(message["step"]), float(message["rate"]))
            report = message.get("report", report)
            failure = message.get("error", failure)
        child.wait()
    finally:
        if child.poll() is None:  # interrupted: take the load off the target at once
            child.kill()
            child.wait()
    if failure is not None:
        raise KeeneyeError(str(failure["message"]), fix=failure.get("fix"))
    if report is None:
        raise KeeneyeError(
            f"the load test's Locust process ended (exit {child.returncode}) without a report",
            fix="run again with --debug; its errors are printed above",
        )
    steps = [StepReport(**step) for step in report["steps"]]
    return LoadReport(
        target="http",
        pipeline=str(report["pipeline"]),
        url=str(report["url"]),
        step_seconds=float(report["step_seconds"]),
        steps=steps,
        truncated=report["truncated"],
    )


def _child_main() -> None:
    """The Locust child of :func:`run_http`: its request on stdin, protocol lines on stdout."""

    def say(message: JsonObject) -> None:
        sys.stdout.write(_LINE + json.dumps(message) + "\n")
        sys.stdout.flush()

    request = json.loads(sys.stdin.read())
    try:
        report = _run_http_here(
            StepPlan(**request["plan"]),
            url=request["url"],
            pipeline=request["pipeline"],
            asynchronous=request["asynchronous"],
            api_key=request["api_key"],
            on_step=lambda index, rate: say({"step": index, "rate": rate}),
            max_requests=request["max_requests"],
            image_size=request.get("image_size", 64),
        )
    except KeeneyeError as exc:
        say({"error": {"message": exc.message, "fix": exc.fix}})
        raise SystemExit(1) from exc
    say({"report": report.as_dict()})


def _run_http_here(
    plan: StepPlan,
    *,
    url: str,
    pipeline: str,
    asynchronous: bool,
    api_key: str | None,
    on_step: Callable[[int, float], None],
    max_requests: int,
    image_size: int = 64,
) -> LoadReport:
    """:func:`run_http`'s work, in the gevent-patched child."""
    try:
        import gevent  # type: ignore[import-untyped,import-not-found,unused-ignore]
        from locust import FastHttpUser, LoadTestShape, task
        from locust.env import Environment
        from locust.runners import STATE_STOPPED
    except ImportError as exc:
        raise KeeneyeError(
            f"the HTTP load test needs Locust ({exc})", fix="pip install 'keeneye[load]'"
        ) from exc

    path = f"/v1/pipelines/{pipeline}/{'observations' if asynchronous else 'predict'}"
    headers = {"content-type": "image/jpeg"}
    if api_key:
        headers["x-api-key"] = api_key
    images = JpegSource(size=image_size)
    samples: list[Sample] = []
    clock = {"t0": time.monotonic()}
    stop_reason: list[str] = []
    announced: set[int] = set()  # steps already reported through on_step

    def elapsed() -> float:
        return time.monotonic() - clock["t0"]

    class StepShape(LoadTestShape):  # type: ignore[misc,unused-ignore]
        def __init__(self) -> None:
            super().__init__()  # type: ignore[no-untyped-call,unused-ignore]

        def tick(self) -> tuple[int, float] | None:
            step = plan.step_at(elapsed())
            if step is None or stop_reason:
                return None
            if step not in announced:
                announced.add(step)
                on_step(step, plan.rates[step])
            users = plan.users_for(plan.rates[step])
            return users, float(users)  # all of a step's users within a second; pacing spreads them

    class PipelineUser(FastHttpUser):  # type: ignore[misc,unused-ignore]
        host = url
        _next: float | None = None

        def wait_time(self) -> float:
            # Constant throughput for the whole swarm: each of n users sends rate/n requests/s.
            now = time.monotonic()
            rate = plan.rate_at(now - clock["t0"]) or plan.rates[-1]
            interval = max(1, self.environment.runner.user_count) / rate
            if self._next is None:
                self._next = now + random.uniform(0, interval)  # noqa: S311 - jitter, not a secret
            else:
                self._next += interval
            self._next = max(self._next, now - interval)  # fell behind: no burst to catch up
            return max(0.0, self._next - now)

        def on_start(self) -> None:
            gevent.sleep(self.wait_time())  # spread a step's new users over the first interval

        @task
        def post_image(self) -> None:
            if len(samples) >= max_requests:
                if not stop_reason:
                    stop_reason.append(f"request cap of {max_requests:,} reached")
                return
            body = images.next()
            started = elapsed()
            t = time.perf_counter()
            # geventhttpclient sends bytes as they are; Locust's hint only names str and dict.
            with self.client.post(
                path,
                data=body,  # type: ignore[arg-type,unused-ignore]
                headers=headers,
                catch_response=True,
            ) as resp:
                seconds = time.perf_counter() - t
                code = int(resp.status_code or 0)
                if 200 <= code < 300:
                    resp.success()
                    status = str(code)
                else:
                    status = str(code) if code else type(resp.error).__name__ if resp.error else "error"
                    resp.failure(status)
            samples.append(Sample(started, seconds, status))

    env = Environment(user_classes=[PipelineUser], shape_class=StepShape(), host=url)
    runner = env.create_local_runner()
    deadline = plan.total_seconds + 30  # hard stop, whatever happens to the shape greenlet
    clock["t0"] = time.monotonic()
    runner.start_shape()
    try:
        while elapsed() < deadline:
            gevent.sleep(0.25)
            if runner.state == STATE_STOPPED and runner.shape_greenlet is None:
                break
        else:
            stop_reason.append(f"hard time limit of {deadline:.0f} s reached")
    finally:
        runner.quit()
    return LoadReport(
        target="http",
        pipeline=pipeline,
        url=url.rstrip("/") + path,
        step_seconds=plan.step_seconds,
        steps=summarize(plan, samples),
        truncated=stop_reason[0] if stop_reason else None,
    )


# --------------------------------------------------------------------------------------------------
# The message bus: a producer ramp through the ingestion path
# --------------------------------------------------------------------------------------------------


def run_bus(
    plan: StepPlan,
    *,
    accept: Callable[[bytes], object],
    lag: Callable[[], int | None] = lambda: None,
    url: str = "",
    pipeline: str,
    on_step: Callable[[int, float], None] | None = None,
    max_requests: int = MAX_TOTAL_REQUESTS,
    image_size: int = 64,
) -> LoadReport:
    """Offer ``plan`` by calling ``accept(image_bytes)`` at the step's rate from one producer.

    ``keeneye loadtest --target bus`` passes the ingestion path (object store + ``queued`` row +
    publish to ``keeneye.<pipeline>.in``) and the input topic's lag for the workers' group.
    """
    images = JpegSource(size=image_size)
    samples: list[Sample] = []
    lags: list[int | None] = []
    t0 = time.monotonic()
    next_at = 0.0
    current = -1
    truncated = None
    while True:
        now = time.monotonic() - t0
        step = plan.step_at(now)
        if step != current:
            if current >= 0:
                lags.append(_safe_lag(lag))
            if step is None:
                break
            current = step
            if on_step is not None:
                on_step(step, plan.rates[step])
        assert step is not None
        if len(samples) >= max_requests:
            truncated = f"request cap of {max_requests:,} reached"
            lags.append(_safe_lag(lag))
            break
        if now < next_at:
            time.sleep(min(next_at - now, 0.05))
            continue
        body = images.next()
        t = time.perf_counter()
        try:
            accept(body)
            status = "ok"
        except KeeneyeError as exc:
            status = getattr(exc, "reason", None) or type(exc).__name__
        except Exception as exc:  # a load test reports failures, it does not stop at the first
            status = type(exc).__name__
        samples.append(Sample(now, time.perf_counter() - t, status))
        # Pace from the schedule, not from "now", so slow calls do not lower the offered rate …
        next_at += 1.0 / plan.rates[step]
        # … but never queue up more than a second of catch-up after a stall.
        next_at = max(next_at, (time.monotonic() - t0) - 1.0)
    return LoadReport(
        target="bus",
        pipeline=pipeline,
        url=url,
        step_seconds=plan.step_seconds,
        steps=summarize(plan, samples, lags),
        truncated=truncated,
    )


def _safe_lag(lag: Callable[[], int | None]) -> int | None:
    try:
        return lag()
    except Exception as exc:  # the lag is informative; the run goes on without it
        log.warning("cannot read the bus lag: %s", exc)
        return None


__all__ = [
    "MAX_RPS",
    "MAX_TOTAL_REQUESTS",
    "MAX_TOTAL_SECONDS",
    "JpegSource",
    "LoadReport",
    "Sample",
    "StepPlan",
    "StepReport",
    "Target",
    "ensure_local",
    "is_loopback_host",
    "run_bus",
    "run_http",
    "summarize",
]


if __name__ == "__main__":  # the child of run_http, started through _CHILD_BOOT
    _child_main()
