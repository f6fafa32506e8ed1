"""Soak: ``keeneye up`` at 80 % of its measured capacity for a chosen time, watched for leaks.

    .venv/bin/python benchmarks/soak.py [--minutes 30] [--interval 10] [--load 0.8] [--out DIR]

1. Set-up: a new KEENEYE_HOME (embedded: SQLite results DB and bus, file objects) whose species-id
   champion is a real MobileNetV2 at 224 px (timm, random weights, as in benchmarks/serving.py — the
   cost of a model, not its accuracy, is what a soak needs; ``--model tiny``: the tests' 32 px
   classifier). The per-client rate limit is lifted: one load generator is one client address.
2. ``keeneye up --pipelines species-id --min-replicas W --max-replicas W --plugins none``: the API, the
   scheduler and W stream workers (pinned, so the set of processes watched stays the same).
3. Capacity, briefly: a closed-loop ramp on ``POST …/predict`` (1, 2, 4, … clients until the rate
   stops rising) and the workers' drain rate of a burst sent through the bus. The API and the workers
   share the cores, so the mix's capacity is ``1 / Σ share / capacity``.
4. The soak: an open-loop load (requests leave at fixed times, a slow answer never delays the next) at
   ``--load`` × that capacity for ``--minutes``, split by ``--mix`` between ``POST …/predict`` (answered
   at once), ``POST …/observations`` (202, a worker answers) and the bus (the ingestion path of
   ``keeneye ingest``: object, ``queued`` row, message); every request is a distinct camera-like photo
   (benchmarks/photos.py, a JPEG comment carrying its number).
5. Every ``--interval`` seconds: RSS, open file descriptors and CPU time of every process of the tree
   (psutil), the sizes of the results DB, the bus and the objects folder, the bus lag, p95 of the
   requests that finished in the interval and their errors.
6. Afterwards: the queue drains, every accepted request is looked up by its observation id (stored,
   ``done``, exactly one row each), and the end-to-end p95 of the queued ones (accepted → done, from
   their rows) is added per interval.
7. The verdict, on the intervals after the warm-up: RSS growth of every process under ``--rss-limit``
   (10 %, medians of the last and first thirds), no fd growth (the fewest descriptors a process held in
   the last third ≤ the fewest in the first + ``--fd-slack``), p95 flat (last third's median within
   ``--p95-tolerance`` of the first's), no process restarted, no 5xx, transport or ingestion error, no
   4xx, at most 1 % of the requests left unsent by the generator (its in-flight cap, a stall), every
   accepted one stored once. Exit status 0 when every check passes.

Writes ``soak.json`` (everything above) and ``soak.png`` (matplotlib; skipped with a message when it is
not installed) into ``--out``. The same code runs the 3-minute CI variant
(tests/integration/test_soak_short.py). docs/operations.md "Soak test" has a measured run's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _path in (str(REPO), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from photos import camera_jpegs  # noqa: E402
from serving import mobilenet_v2_onnx, prepare_keeneye, tagged  # noqa: E402

PIPELINE = "species-id"
ROUTES = ("predict", "observations", "bus")
QUEUED_ROUTES = ("observations", "bus")
OK_STATUSES = frozenset({"200", "202", "ok"})
OVERFLOW = "overflow"
HTTP_TIMEOUT_SECONDS = 60.0
ROLE_OF_COMMAND = {"up": "supervisor", "serve": "api"}
MIB = 1024 * 1024


# ------------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class SoakConfig:
    """One soak; the defaults are the 30-minute soak at 80 % of capacity (docs/operations.md)."""

    minutes: float = 30.0
    interval: float = 10.0
    warmup: float | None = None  # seconds of the soak left out of the verdict; None: 10 %, at least 60 s
    load: float = 0.8  # share of the measured capacity offered
    mix: tuple[float, float, float] = (0.5, 0.25, 0.25)  # predict, observations, bus
    max_rate: float | None = None  # requests/s, whatever the capacity (keeps a CI run modest)
    model: str = "mobilenet"  # mobilenet | tiny
    workers: int = 1
    photos: int = 200
    width: int = 640
    height: int = 480
    capacity_seconds: float = 6.0  # measured seconds per closed-loop level, and of the drain burst
    max_clients: int = 16
    rss_limit: float = 0.10
    fd_slack: int = 2
    p95_tolerance: float = 0.25
    p95_slack_ms: float = 5.0
    undelivered_limit: float = 0.01  # share of requests the generator may drop (overflow, skipped)
    drain_timeout: float = 180.0
    max_in_flight: int = 16  # the API's default cap per client address (serving.max_inflight_per_client)
    seed: int = 0

    @property
    def seconds(self) -> float:
        return self.minutes * 60

    @property
    def warmup_seconds(self) -> float:
        if self.warmup is not None:
            return self.warmup
        return min(max(60.0, 0.1 * self.seconds), self.seconds / 3)

    def shares(self) -> dict[str, float]:
        total = sum(self.mix)
        if total <= 0 or min(self.mix) < 0:
            raise ValueError(f"--mix {self.mix}: shares must be ≥ 0 with a positive sum")
        return {route: share / total for route, share in zip(ROUTES, self.mix, strict=True)}


# ------------------------------------------------------------------------------------------------ set-up


class PhotoFeed:
    """Distinct request bodies for the whole run: the photos in turn, each with its own number."""

    def __init__(self, photos: Sequence[bytes], start: int = 0) -> None:
        self._photos = list(photos)
        self._counter = itertools.count(start)  # next() on a count is atomic: safe across threads

    def next(self) -> bytes:
        n = next(self._counter)
        return tagged(self._photos[n % len(self._photos)], n)


def prepare_home(home: Path, model: str) -> Any:
    """A KEENEYE_HOME with species-id's champion registered; returns its Settings (pipelines dir set)."""
    from tests.serving_support import register_species_model, with_species_limits

    from keeneye.settings import Settings

    os.environ["KEENEYE_CONFIG"] = os.devnull  # defaults only: the soak measures a known set-up
    home.mkdir(parents=True, exist_ok=True)
    if model == "mobilenet":
        onnx, _what = mobilenet_v2_onnx(10, 224)
        prepare_keeneye(home, onnx)  # writes home/pipelines/species-id.yaml with the limit lifted
    elif model != "tiny":
        raise ValueError(f"--model {model!r}: use mobilenet or tiny")
    settings = with_species_limits(Settings(home=home), home, rate_per_second=1e9, burst=10**9)
    if model == "tiny":
        register_species_model(settings, home)
    return settings


@dataclass
class UpProcess:
    proc: subprocess.Popen[bytes]
    base: str
    log: Path
    exit_code: int | None = None


def up_env(settings: Any, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``keeneye`` process on ``settings``' home (and of a CLI run beside it)."""
    return {
        **os.environ,
        "KEENEYE_HOME": str(settings.home),
        "KEENEYE_CONFIG": os.devnull,
        "KEENEYE_PIPELINES__DIRS": json.dumps([str(d) for d in settings.pipelines.dirs]),
        **(extra or {}),
    }


@contextmanager
def keeneye_up(
    settings: Any,
    workers: int,
    log: Path,
    timeout: float = 180,
    *,
    max_workers: int | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[UpProcess]:
    """``keeneye up`` for species-id with ``workers`` pinned workers (``max_workers``: autoscaled from
    ``workers`` up to it), until every worker beats; ``env``: more environment (settings)."""
    import httpx
    from tests.services import free_port

    port = free_port()
    command = [
        sys.executable, "-m", "keeneye", "up", "--pipelines", PIPELINE, "--port", str(port),
        "--min-replicas", str(workers), "--max-replicas", str(max_workers or workers), "--plugins", "none",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=up_env(settings, env), stdout=out, stderr=subprocess.STDOUT)
    up = UpProcess(proc=proc, base=f"http://127.0.0.1:{port}", log=log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"keeneye up exited with {proc.returncode}: {log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"keeneye up not ready after {timeout:.0f} s: {log.read_text()[-3000:]}")
            try:
                view = httpx.get(f"{up.base}/v1/system", timeout=2).json()
                beats = view["system"]["pipelines"][PIPELINE]["heartbeats"]
                if view["running"] and beats == workers and httpx.get(f"{up.base}/ready").status_code == 200:
                    break
            except (httpx.HTTPError, KeyError, TypeError, ValueError):
                pass
            time.sleep(0.3)
        yield up
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # API first, then the workers finish their batch
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        up.exit_code = proc.returncode


# ------------------------------------------------------------------------------------------------ sampling


def process_role(cmdline: Sequence[str]) -> str:
    """``python -m keeneye worker …`` → worker; ``keeneye up`` → supervisor; anything else: its program."""
    for i, arg in enumerate(cmdline):
        if (arg == "keeneye" or arg.endswith("/keeneye")) and i + 1 < len(cmdline):
            return ROLE_OF_COMMAND.get(cmdline[i + 1], cmdline[i + 1])
    return Path(cmdline[0]).name if cmdline else "unknown"


class ProcessTree:
    """RSS, open fds and CPU seconds of a process and all its descendants, each under a stable label
    (``api``, ``scheduler``, ``worker-1`` …; a restarted process comes back under a new label)."""

    def __init__(self, pid: int) -> None:
        import psutil

        self._psutil = psutil
        self.root = psutil.Process(pid)
        self.labels: dict[int, str] = {}
        self._seen: Counter[str] = Counter()

    def _label(self, proc: Any) -> str:
        label = self.labels.get(proc.pid)
        if label is None:
            role = process_role(proc.cmdline())
            self._seen[role] += 1
            n = self._seen[role]
            label = f"{role}-{n}" if role == "worker" or n > 1 else role
            self.labels[proc.pid] = label
        return label

    def sample(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except self._psutil.NoSuchProcess:
            return out
        for proc in procs:
            try:
                with proc.oneshot():
                    cpu = proc.cpu_times()
                    out[self._label(proc)] = {
                        "pid": proc.pid,
                        "rss": proc.memory_info().rss,
                        "fds": proc.num_fds(),
                        "cpu_s": round(cpu.user + cpu.system, 2),
                    }
            except (self._psutil.NoSuchProcess, self._psutil.ZombieProcess, self._psutil.AccessDenied):
                continue
        return out


def sqlite_file(url: str) -> Path | None:
    return Path(url[len("sqlite:///") :].split("?")[0]) if url.startswith("sqlite:///") else None


def file_bytes(path: Path | None) -> int | None:
    """A SQLite file with its -wal and -shm files; None when the backend is not a local file."""
    if path is None:
        return None
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())


def tree_bytes(root: Path) -> tuple[int, int]:
    """Bytes and files under ``root``."""
    total = files = 0
    stack = [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except FileNotFoundError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
                    files += 1
            except FileNotFoundError:  # removed while we looked (a temp file)
                continue
    return total, files


def store_sizes(settings: Any) -> dict[str, int | None]:
    objects = urlsplit(settings.objects_url)
    sizes: dict[str, int | None] = {
        "db_bytes": file_bytes(sqlite_file(settings.database_url)),
        "bus_bytes": file_bytes(sqlite_file(settings.bus_url)),
        "objects_bytes": None,
        "objects_files": None,
    }
    if objects.scheme == "file":
        sizes["objects_bytes"], sizes["objects_files"] = tree_bytes(Path(unquote(objects.path)))
    sizes["metrics_bytes"] = tree_bytes(settings.home / "run" / "metrics")[0]
    return sizes


# ------------------------------------------------------------------------------------------------ load


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the soak started, when the request finished
    route: str  # predict | observations | bus
    ms: float
    status: str  # "200", "202", "ok", an HTTP error code, a reason or an exception name
    observation_id: str | None


def failure_kind(status: str) -> str | None:
    """None for a success; ``refused`` (4xx), ``overflow`` (the generator's in-flight cap: never sent),
    or ``server`` (5xx, a transport error, an ingestion failure): what the soak must never see."""
    if status in OK_STATUSES:
        return None
    if status == OVERFLOW:
        return "overflow"
    return "refused" if status.isdigit() and 400 <= int(status) < 500 else "server"


async def _post(http: Any, feed: PhotoFeed, route: str) -> tuple[str, str | None]:
    import httpx

    path = f"/v1/pipelines/{PIPELINE}/{'predict' if route == 'predict' else 'observations'}"
    try:
        r = await http.post(path, content=feed.next(), headers={"content-type": "image/jpeg"})
    except httpx.HTTPError as exc:
        return type(exc).__name__, None
    if r.status_code in (200, 202):
        body = r.json()
        return str(r.status_code), str(body["observation_id"] if route == "predict" else body["id"])
    return str(r.status_code), None


class OpenLoad:
    """Requests at fixed times (open loop) on every route, each route at its own rate, until stopped.

    HTTP requests come from one asyncio loop (at most ``max_in_flight`` at once; one more is counted as
    ``overflow``, never sent); the bus route from one thread calling ``accept`` (the ingestion path).
    A generator that fell more than a second behind its schedule skips ahead (``skipped``): it
    measures the system, not a stalled load generator.
    """

    def __init__(
        self,
        *,
        base: str,
        feed: PhotoFeed,
        rates: dict[str, float],
        accept: Callable[[bytes], str],
        max_in_flight: int,
        seed: int = 0,
    ) -> None:
        self.base, self.feed, self.rates, self.accept = base, feed, rates, accept
        self.max_in_flight = max_in_flight
        self.seed = seed
        self.samples: list[Sample] = []  # appended by the load threads (atomic), read by the sampler
        self.skipped = 0
        self._stop = threading.Event()
        self._t0 = 0.0
        self._threads: list[threading.Thread] = []
        http_rate = rates["predict"] + rates["observations"]
        if http_rate > 0:
            self._threads.append(threading.Thread(target=lambda: asyncio.run(self._http(http_rate))))
        if rates["bus"] > 0:
            self._threads.append(threading.Thread(target=self._bus, args=(rates["bus"],)))

    def start(self) -> float:
        self._t0 = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self._t0

    def stop(self) -> None:
        """Stop sending; returns once every request sent has its answer."""
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _record(self, route: str, started: float, status: str, observation_id: str | None) -> None:
        now = time.monotonic()
        self.samples.append(Sample(now - self._t0, route, (now - started) * 1000, status, observation_id))

    def _due(self, t0: float, i: int, rate: float) -> tuple[float, int]:
        """Seconds until request ``i`` is due (≤ 0: now), and ``i`` moved past a stall over 1 s."""
        behind = time.monotonic() - t0 - 1.0
        if i / rate < behind:
            ahead = int(behind * rate)
            self.skipped += ahead - i
            i = ahead
        return t0 + i / rate - time.monotonic(), i

    async def _http(self, rate: float) -> None:
        import httpx

        share = self.rates["observations"] / rate
        rng = random.Random(self.seed)
        pending: set[asyncio.Task[None]] = set()
        limits = httpx.Limits(
            max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight
        )

        async def one(http: httpx.AsyncClient, route: str) -> None:
            started = time.monotonic()
            status, oid = await _post(http, self.feed, route)
            self._record(route, started, status, oid)

        async with httpx.AsyncClient(base_url=self.base, timeout=HTTP_TIMEOUT_SECONDS, limits=limits) as http:
            t0, i = time.monotonic(), 0
            while not self._stop.is_set():
                delay, i = self._due(t0, i, rate)
                if delay > 0:
                    await asyncio.sleep(min(delay, 0.1))
                    continue
                i += 1
                route = "observations" if rng.random() < share else "predict"
                if len(pending) >= self.max_in_flight:
                    self._record(route, time.monotonic(), OVERFLOW, None)
                    continue
                task = asyncio.create_task(one(http, route))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.wait(pending)

    def _bus(self, rate: float) -> None:
        t0, i = time.monotonic(), 0
        while not self._stop.is_set():
            delay, i = self._due(t0, i, rate)
            if delay > 0:
                self._stop.wait(min(delay, 0.1))
                continue
            i += 1
            started = time.monotonic()
            try:
                oid: str | None = self.accept(self.feed.next())
                status = "ok"
            except Exception as exc:  # a soak counts failures, it does not stop at the first
                oid, status = None, str(getattr(exc, "reason", None) or type(exc).__name__)
            self._record("bus", started, status, oid)


# ------------------------------------------------------------------------------------------------ capacity


def closed_loop(
    base: str, feed: PhotoFeed, clients: int, seconds: float, warm: float = 1.0
) -> dict[str, Any]:
    """``clients`` clients posting to …/predict back to back: requests/s, p95, statuses, ids."""
    import httpx

    async def main() -> dict[str, Any]:
        latencies: list[float] = []
        statuses: Counter[str] = Counter()
        ids: list[str] = []
        measuring = False

        async def client(http: httpx.AsyncClient, until: float) -> None:
            while time.monotonic() < until:
                t = time.monotonic()
                status, oid = await _post(http, feed, "predict")
                if oid:
                    ids.append(oid)
                if measuring:
                    latencies.append((time.monotonic() - t) * 1000)
                    statuses[status] += 1

        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=base, timeout=HTTP_TIMEOUT_SECONDS, limits=limits) as http:
            end = time.monotonic() + warm
            await asyncio.gather(*(client(http, end) for _ in range(clients)))
            measuring = True
            start = time.monotonic()
            await asyncio.gather(*(client(http, start + seconds) for _ in range(clients)))
            wall = time.monotonic() - start
        return {
            "clients": clients,
            "rps": round(statuses["200"] / wall, 2),
            "p95_ms": percentile(latencies, 95),
            "statuses": dict(statuses),
            "ids": ids,
        }

    return asyncio.run(main())


def wait_finished(db: Any, ids: Sequence[str], timeout: float) -> set[str]:
    """Waits until every observation of ``ids`` is finished (done, rejected, failed); the others."""
    pending = set(ids)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        records = fetch_records(db, pending)
        pending = {i for i in pending if i not in records or records[i].completed_at is None}
        if pending:
            time.sleep(0.5)
    return pending


def fetch_records(db: Any, ids: Sequence[str] | set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ordered = sorted(ids)
    for i in range(0, len(ordered), 500):
        out.update(db.get_observations(ordered[i : i + 500]))
    return out


def measure_capacity(
    base: str,
    feed: PhotoFeed,
    accept: Callable[[bytes], str],
    db: Any,
    cfg: SoakConfig,
    say: Callable[[str], None],
) -> tuple[dict[str, Any], list[str]]:
    """The API's closed-loop capacity on …/predict, the workers' drain rate, the mix's capacity."""
    levels: list[dict[str, Any]] = []
    ids: list[str] = []
    best = 0.0
    clients = 1
    while clients <= cfg.max_clients:
        level = closed_loop(base, feed, clients, cfg.capacity_seconds)
        ids.extend(level.pop("ids"))
        levels.append(level)
        say(f"capacity: {clients:>2} client(s) {level['rps']:7.1f} req/s  p95 {level['p95_ms']:6.1f} ms")
        if level["rps"] < best * 1.05:  # no longer rising: the API is saturated
            break
        best = max(best, level["rps"])
        clients *= 2
    api_rps = max(level["rps"] for level in levels)
    burst = max(20, round(api_rps * cfg.capacity_seconds))
    t = time.monotonic()
    burst_ids = [accept(feed.next()) for _ in range(burst)]
    left = wait_finished(db, burst_ids, cfg.drain_timeout)
    worker_rps = (burst - len(left)) / (time.monotonic() - t)
    ids.extend(burst_ids)
    say(f"capacity: workers drained {burst} queued photos at {worker_rps:.1f} req/s")
    shares = cfg.shares()
    queued = shares["observations"] + shares["bus"]
    mixed = 1.0 / (shares["predict"] / api_rps + queued / worker_rps)
    capacity = {
        "levels": levels,
        "api_rps": api_rps,
        "burst": burst,
        "worker_rps": round(worker_rps, 2),
        "mixed_rps": round(mixed, 2),
    }
    return capacity, ids


# ------------------------------------------------------------------------------------------------ the soak


def percentile(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values), q)), 2) if len(values) else None


def interval_figures(samples: Sequence[Sample], seconds: float) -> dict[str, Any]:
    """Requests that finished in one interval: counts, rate, p50/p95 per route, errors by status."""
    by_route: dict[str, list[float]] = {r: [] for r in ROUTES}
    errors: Counter[str] = Counter()
    for s in samples:
        if s.status in OK_STATUSES:
            by_route[s.route].append(s.ms)
        else:
            errors[f"{s.route} {s.status}"] += 1
    ok = sum(len(v) for v in by_route.values())
    return {
        "requests": len(samples),
        "ok_rps": round(ok / seconds, 2),
        "p50_ms": {r: percentile(v, 50) for r, v in by_route.items()},
        "p95_ms": {r: percentile(v, 95) for r, v in by_route.items()},
        "errors": dict(errors),
    }


def soak(
    load: OpenLoad,
    tree: ProcessTree,
    settings: Any,
    lag: Callable[[], int | None],
    cfg: SoakConfig,
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Runs the load for ``cfg.minutes``, sampling every ``cfg.interval`` s; the intervals."""
    intervals: list[dict[str, Any]] = []
    t0 = load.start()
    seen = 0
    n_intervals = max(1, round(cfg.seconds / cfg.interval))
    say(
        f"\n{'t s':>6} {'ok/s':>6} {'p95 predict':>11} {'p95 accept':>10} {'errors':>6} {'lag':>5}"
        "  RSS MiB · fds"
    )
    try:
        for n in range(1, n_intervals + 1):
            time.sleep(max(0.0, t0 + n * cfg.interval - time.monotonic()))
            count = len(load.samples)
            figures = interval_figures(load.samples[seen:count], cfg.interval)
            seen = count
            row = {
                "t": round(time.monotonic() - t0, 1),
                **figures,
                "bus_lag": lag(),
                "processes": tree.sample(),
                "sizes": store_sizes(settings),
            }
            intervals.append(row)
            say(live_line(row))
    finally:
        load.stop()
    return intervals


def live_line(row: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    accept = max((v for r, v in row["p95_ms"].items() if r != "predict" and v is not None), default=None)
    procs = " ".join(f"{k} {v['rss'] / MIB:.0f}·{v['fds']:.0f}" for k, v in row["processes"].items())
    lag = "-" if row["bus_lag"] is None else str(row["bus_lag"])
    return (
        f"{row['t']:>6.0f} {row['ok_rps']:>6.1f} {ms(row['p95_ms']['predict']):>11} {ms(accept):>10} "
        f"{sum(row['errors'].values()):>6} {lag:>5}  {procs}"
    )


def add_end_to_end(
    intervals: list[dict[str, Any]], records: dict[str, Any], started: datetime, interval: float
) -> None:
    """p95 of accepted → done of the queued observations, per interval in which they finished."""
    per: list[list[float]] = [[] for _ in intervals]
    for rec in records.values():
        if rec.completed_at is None:
            continue
        done, created = _aware(rec.completed_at), _aware(rec.created_at)
        index = int((done - started).total_seconds() // interval)
        if 0 <= index < len(per):
            per[index].append((done - created).total_seconds() * 1000)
    for row, values in zip(intervals, per, strict=True):
        row["e2e_p95_ms"] = percentile(values, 95)
        row["e2e_finished"] = len(values)


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def stored_check(db: Any, accepted: Sequence[str], statuses: Sequence[str]) -> dict[str, Any]:
    """Every accepted id has its row, finished ``done``; the pipeline has exactly that many rows."""
    records = fetch_records(db, accepted)
    by_status = Counter(str(r.status) for r in records.values())
    edges = [datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(days=1)]
    rows = sum(v[0] for v in db.observation_counts(PIPELINE, statuses, edges).values())
    return {
        "accepted": len(accepted),
        "distinct": len(set(accepted)),
        "found": len(records),
        "by_status": dict(by_status),
        "pipeline_rows": rows,
    }


# ------------------------------------------------------------------------------------------------ verdict


@dataclass(frozen=True)
class Check:
    key: str  # rss, fds, processes, p95_predict, p95_queued, errors, refused, delivered, stored, …
    name: str
    passed: bool
    detail: str


def _median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


def thirds(
    intervals: Sequence[dict[str, Any]], warmup: float, interval: float
) -> tuple[list[Any], list[Any]]:
    """The first and the last third of the intervals that began after the warm-up."""
    after = [row for row in intervals if row["t"] - interval >= warmup - 1e-6]
    third = len(after) // 3
    return (after[:third], after[-third:]) if third else ([], [])


def judge(report: dict[str, Any], cfg: SoakConfig) -> list[Check]:
    intervals = report["intervals"]
    first, last = thirds(intervals, cfg.warmup_seconds, cfg.interval)
    checks: list[Check] = []
    if not first:
        return [
            Check("samples", "enough samples", False, "fewer than 3 intervals after the warm-up: run longer")
        ]
    labels = [k for k in first[0]["processes"] if all(k in row["processes"] for row in (*first, *last))]

    growth = {}
    for k in labels:
        begin = _median([row["processes"][k]["rss"] for row in first])
        end = _median([row["processes"][k]["rss"] for row in last])
        growth[k] = (end - begin) / begin
    worst = max(growth, key=lambda k: growth[k])
    checks.append(Check(
        "rss",
        f"RSS growth after warm-up < {cfg.rss_limit:.0%}",
        growth[worst] < cfg.rss_limit,
        ", ".join(f"{k} {g:+.1%}" for k, g in growth.items()),
    ))  # fmt: skip

    # The floor, not the median: a leaked descriptor never closes, so the fewest a process holds rises,
    # while keep-alive connections coming and going only move its peaks.
    fd_growth = {
        k: min(row["processes"][k]["fds"] for row in last) - min(row["processes"][k]["fds"] for row in first)
        for k in labels
    }
    checks.append(Check(
        "fds",
        f"no fd growth (≤ {cfg.fd_slack})",
        max(fd_growth.values()) <= cfg.fd_slack,
        ", ".join(f"{k} {g:+.0f}" for k, g in fd_growth.items()),
    ))  # fmt: skip

    all_labels = {k for row in intervals for k in row["processes"]}
    steady = all(set(row["processes"]) == all_labels for row in intervals)
    checks.append(Check("processes", "no process restarted or lost", steady, ", ".join(sorted(all_labels))))

    for key, name in (
        ("p95_predict", "p95 flat (predict)"),
        ("p95_queued", "p95 flat (queued, accepted → done)"),
    ):

        def p95(row: dict[str, Any], key: str = key) -> float | None:
            return row["e2e_p95_ms"] if key == "p95_queued" else row["p95_ms"]["predict"]

        a = [v for v in map(p95, first) if v is not None]
        b = [v for v in map(p95, last) if v is not None]
        if not a or not b:
            continue
        begin, end = _median(a), _median(b)
        bound = begin * (1 + cfg.p95_tolerance) + cfg.p95_slack_ms
        checks.append(
            Check(
                key,
                name,
                end <= bound,
                f"first third {begin:.0f} ms, last third {end:.0f} ms (≤ {bound:.0f})",
            )
        )

    kinds: Counter[str] = Counter()
    for key, count in report["errors"].items():  # "<route> <status>"
        kinds[failure_kind(key.split(" ", 1)[1]) or "ok"] += count
    listed = ", ".join(f"{k}: {v}" for k, v in report["errors"].items()) or "none"
    checks.append(Check("errors", "no 5xx, transport or ingestion error", kinds["server"] == 0, listed))
    checks.append(Check("refused", "no request refused (4xx)", kinds["refused"] == 0, listed))
    undelivered = kinds["overflow"] + report["skipped"]
    checks.append(Check(
        "delivered",
        f"the load went out as planned (≤ {cfg.undelivered_limit:.0%} overflow or skipped)",
        undelivered <= cfg.undelivered_limit * report["requests"],
        f"{undelivered} of {report['requests']} requests ({kinds['overflow']} over the in-flight cap, "
        f"{report['skipped']} skipped by a stalled generator)",
    ))  # fmt: skip

    st = report["stored"]
    done = st["by_status"].get("done", 0)
    once = st["accepted"] == st["distinct"] == st["found"] == done == st["pipeline_rows"]
    checks.append(Check(
        "stored",
        "every accepted request stored once, done",
        once,
        f"accepted {st['accepted']}, rows found {st['found']}, done {done}, rows of the pipeline "
        f"{st['pipeline_rows']}",
    ))  # fmt: skip
    checks.append(
        Check(
            "stopped",
            "keeneye up stopped cleanly",
            report["up_exit_code"] == 0,
            f"exit {report['up_exit_code']}",
        )
    )
    return checks


# ------------------------------------------------------------------------------------------------ run


def run_soak(cfg: SoakConfig, home: Path, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Everything of the module docstring; the report (JSON-ready) with ``checks`` and ``passed``."""
    from keeneye.domain import ObservationStatus
    from keeneye.store import open_results_db
    from keeneye.stream import DEFAULT_GROUP, Ingestor, input_topic, open_bus

    began = time.monotonic()
    shares = cfg.shares()
    say(f"set-up: {cfg.model} model in {home} …")
    settings = prepare_home(home, cfg.model)
    feed = PhotoFeed(camera_jpegs(cfg.photos, cfg.width, cfg.height, seed=cfg.seed))
    report: dict[str, Any] = {"config": asdict(cfg), "started": datetime.now(UTC).isoformat()}
    report["setup_seconds"] = round(time.monotonic() - began, 1)
    accepted: list[str] = []
    db = open_results_db(settings)
    ingestor = Ingestor(settings)
    bus = open_bus(settings)

    def accept(data: bytes) -> str:
        return ingestor.accept(PIPELINE, data, source="bus").id

    def lag() -> int | None:
        try:
            return int(bus.lag(input_topic(PIPELINE), DEFAULT_GROUP))
        except Exception:
            return None

    try:
        with keeneye_up(settings, cfg.workers, home / "up.log") as up:
            report["startup_seconds"] = round(time.monotonic() - began - report["setup_seconds"], 1)
            say(
                f"keeneye up ready at {up.base} (set-up {report['setup_seconds']:.0f} s, "
                f"start {report['startup_seconds']:.0f} s)"
            )
            capacity, ids = measure_capacity(up.base, feed, accept, db, cfg, say)
            accepted += ids
            rate = cfg.load * capacity["mixed_rps"]
            if cfg.max_rate is not None:
                rate = min(rate, cfg.max_rate)
            rates = {r: round(rate * s, 3) for r, s in shares.items()}
            report["capacity"], report["rates"] = capacity, rates
            say(
                f"capacity {capacity['mixed_rps']:.1f} req/s for the mix; offering {rate:.1f} req/s for "
                f"{cfg.minutes:g} min: " + ", ".join(f"{r} {v:.1f}/s" for r, v in rates.items())
            )
            load = OpenLoad(
                base=up.base,
                feed=feed,
                rates=rates,
                accept=accept,
                max_in_flight=cfg.max_in_flight,
                seed=cfg.seed,
            )
            tree = ProcessTree(up.proc.pid)
            soak_started = datetime.now(UTC)
            intervals = soak(load, tree, settings, lag, cfg, say)
            samples = load.samples
            soak_ids = [s.observation_id for s in samples if s.observation_id]
            queued_ids = [s.observation_id for s in samples if s.observation_id and s.route in QUEUED_ROUTES]
            accepted += soak_ids
            say(f"draining {len(queued_ids)} queued observations …")
            left = wait_finished(db, queued_ids, cfg.drain_timeout)
            report["drain_left"] = len(left)
            add_end_to_end(intervals, fetch_records(db, queued_ids), soak_started, cfg.interval)
            report["intervals"] = intervals
            report["requests"] = len(samples)
            report["skipped"] = load.skipped
            report["ok_by_route"] = dict(Counter(s.route for s in samples if s.status in OK_STATUSES))
            report["errors"] = dict(
                Counter(f"{s.route} {s.status}" for s in samples if s.status not in OK_STATUSES)
            )
            report["server_errors"] = sum(1 for s in samples if failure_kind(s.status) == "server")
            report["stored"] = stored_check(db, accepted, [s.value for s in ObservationStatus])
        report["up_exit_code"] = up.exit_code
    finally:
        ingestor.close()
        bus.close()
    report["seconds"] = round(time.monotonic() - began, 1)
    checks = judge(report, cfg)
    report["checks"] = [asdict(c) for c in checks]
    report["passed"] = all(c.passed for c in checks)
    return report


# ------------------------------------------------------------------------------------------------ output


def table(report: dict[str, Any], rows: int = 30) -> str:
    """The intervals (at most ``rows`` of them, evenly picked, the last always) as a Markdown table
    for the note, then the verdict."""
    labels = list(dict.fromkeys(k for row in report["intervals"] for k in row["processes"]))
    names = "/".join(labels)
    head = ["t min", "ok/s", "p95 predict ms", "p95 accepted→done ms", "errors", "lag",
            f"RSS MiB {names}", f"fds {names}", "DB MB", "bus MB", "objects MB"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def num(v: float | None, fmt: str = ".0f") -> str:
        return "-" if v is None else format(v, fmt)

    for row in every_nth(report["intervals"], rows):
        procs = row["processes"]
        sizes = row["sizes"]
        cells = [
            f"{row['t'] / 60:.1f}",
            f"{row['ok_rps']:.1f}",
            num(row["p95_ms"]["predict"]),
            num(row.get("e2e_p95_ms")),
            str(sum(row["errors"].values())),
            num(row["bus_lag"]),
            "/".join(num(procs[k]["rss"] / MIB) if k in procs else "-" for k in labels),
            "/".join(num(procs[k]["fds"]) if k in procs else "-" for k in labels),
            *(
                num(sizes[k] / 1e6 if sizes[k] is not None else None, ".1f")
                for k in ("db_bytes", "bus_bytes", "objects_bytes")
            ),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for check in report["checks"]:
        lines.append(f"- {'PASS' if check['passed'] else 'FAIL'} {check['name']}: {check['detail']}")
    lines.append(f"\nverdict: {'PASS' if report['passed'] else 'FAIL'}")
    return "\n".join(lines)


def every_nth(rows: list[dict[str, Any]], at_most: int) -> list[dict[str, Any]]:
    if not rows:
        return rows
    step = max(1, -(-len(rows) // at_most))
    picked = rows[::step]
    return picked if picked[-1] is rows[-1] else [*picked, rows[-1]]


def plot(report: dict[str, Any], path: Path) -> str:
    """soak.png: RSS and fds per process, store sizes, p95 over time; a message either way."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    rows = report["intervals"]
    t = [row["t"] / 60 for row in rows]
    labels = list(dict.fromkeys(k for row in rows for k in row["processes"]))
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), sharex=True)
    for k in labels:
        axes[0][0].plot(t, [row["processes"].get(k, {}).get("rss", np.nan) / MIB for row in rows], label=k)
        axes[0][1].plot(t, [row["processes"].get(k, {}).get("fds", np.nan) for row in rows], label=k)
    for key in ("db_bytes", "bus_bytes", "objects_bytes"):
        values = [row["sizes"][key] for row in rows]
        if all(v is not None for v in values):
            axes[1][0].plot(t, [v / 1e6 for v in values], label=key.removesuffix("_bytes"))
    axes[1][1].plot(t, [row["p95_ms"]["predict"] or np.nan for row in rows], label="predict")
    axes[1][1].plot(t, [row.get("e2e_p95_ms") or np.nan for row in rows], label="queued: accepted → done")
    titles = ("RSS per process (MiB)", "open fds per process", "stores (MB)", "p95 per interval (ms)")
    warm = report["config"]["warmup"]
    warm_min = (
        warm if warm is not None else SoakConfig(minutes=report["config"]["minutes"]).warmup_seconds
    ) / 60
    for ax, title in zip(axes.flat, titles, strict=True):
        ax.set_title(title)
        ax.axvline(warm_min, color="grey", linestyle=":", linewidth=1)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("minutes")
    offered = sum(report["rates"].values())
    fig.suptitle(f"keeneye soak: {offered:.1f} req/s offered, {'PASS' if report['passed'] else 'FAIL'}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot: {path}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="soak duration after the capacity ramp")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--warmup", type=float, default=None, help="seconds left out of the verdict (10 %%, ≥ 60)"
    )
    parser.add_argument("--load", type=float, default=0.8, help="share of the measured capacity offered")
    parser.add_argument("--max-rate", type=float, default=None, help="cap on the offered requests/s")
    parser.add_argument("--mix", default="0.5,0.25,0.25", help="shares predict,observations,bus")
    parser.add_argument("--model", choices=("mobilenet", "tiny"), default="mobilenet")
    parser.add_argument("--workers", type=int, default=1, help="stream workers (pinned)")
    parser.add_argument("--photos", type=int, default=200, help="distinct photos generated")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--capacity-seconds", type=float, default=6.0, help="seconds per capacity level")
    parser.add_argument("--rss-limit", type=float, default=0.10, help="largest RSS growth allowed")
    parser.add_argument("--fd-slack", type=int, default=2, help="largest fd growth allowed")
    parser.add_argument("--p95-tolerance", type=float, default=0.25, help="p95 rise allowed (share)")
    parser.add_argument("--out", type=Path, default=None, help="folder for soak.json, soak.png, up.log")
    parser.add_argument("--keep-home", action="store_true", help="keep KEENEYE_HOME (in --out/home)")
    args = parser.parse_args()
    mix = tuple(float(v) for v in args.mix.split(","))
    if len(mix) != 3:
        parser.error("--mix takes three shares: predict,observations,bus")
    cfg = SoakConfig(
        minutes=args.minutes, interval=args.interval, warmup=args.warmup, load=args.load,
        max_rate=args.max_rate, mix=(mix[0], mix[1], mix[2]), model=args.model, workers=args.workers,
        photos=args.photos, width=args.width, height=args.height, capacity_seconds=args.capacity_seconds,
        rss_limit=args.rss_limit, fd_slack=args.fd_slack, p95_tolerance=args.p95_tolerance,
    )  # fmt: skip
    out = args.out or Path(f"soak-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
    out.mkdir(parents=True, exist_ok=True)
    home = out / "home" if args.keep_home else Path(tempfile.mkdtemp(prefix="keeneye-soak-"))
    try:
        report = run_soak(cfg, home, say=lambda line: print(line, flush=True))
    finally:
        if (home / "up.log").exists():
            shutil.copyfile(home / "up.log", out / "up.log")
        if not args.keep_home:
            shutil.rmtree(home, ignore_errors=True)
    (out / "soak.json").write_text(json.dumps(report, indent=2, default=str))
    print("\n" + table(report))
    print(plot(report, out / "soak.png"))
    print(f"report: {out / 'soak.json'}")
    raise SystemExit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
