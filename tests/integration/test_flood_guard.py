"""Issue 20, item 4: a flood from one client is held over real HTTP; another client is not hurt.

One ``keeneye serve`` process on a free loopback port (species-id, the tiny classifier), the rate limit
lifted so that the concurrency caps meet the flood. A flooder process (``flood_client.py``) opens
``FLOOD_CONNECTIONS`` connections (twice the server's 64 in-flight slots) from ``127.0.0.2`` and posts
1.7 MB images back to back without ever waiting, while this process, from ``127.0.0.1``, sends small
images one at a time. Checked:

* the flood gets 429 ``too_many_in_flight`` (and only that, or 200 for the 16 requests it may hold);
* every request of the other client succeeds, and its p95 stays within ``P95_RATIO`` times its p95
  on the idle server measured just before: a ratio, no absolute milliseconds. The ratio is generous
  on purpose: the server shares itself between the other client's request and the flood's 16, so
  up to 17× is the fair share;
* the server's RSS (psutil, sampled every 50 ms) grows by less than the flood's bodies in all 64
  slots would take, twice over (upload and copy): refused bodies are never read and nothing queues
  beyond the flooder's 16 requests.

Measured on the shared 2-core test machine (load ~16): guarded, +117–136 MiB RSS and the other
client's p95 2.8–16× its idle p95; with the cap lifted (``max_inflight_per_client`` 1000), the flood
took every slot (503 ``busy``), +389–395 MiB RSS and 12–20× — this test then fails on the refusals
and on memory.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from keeneye.settings import Settings
from tests.services import free_port, wait_for_port
from tests.serving_support import jpeg, register_species_model, with_species_limits

pytestmark = pytest.mark.slow  # a server process, a flooder process, a few seconds of flood

PREDICT = "/v1/pipelines/species-id/predict"
FLOOD_CLIENT = Path(__file__).with_name("flood_client.py")
FLOOD_ADDRESS = "127.0.0.2"  # loopback too (127.0.0.0/8): another client address to the server
SERVER_SLOTS = 64  # the default serving.max_inflight
FLOOD_CONNECTIONS = 2 * SERVER_SLOTS  # unguarded, the flood would fill every slot
FLOOD_IMAGE_SIZE = 1600  # px: ~1.7 MB of noise JPEG per request
GOOD_REQUESTS = 40
PER_CLIENT_CAP = 16  # the default serving.max_inflight_per_client
P95_RATIO = 2 * (PER_CLIENT_CAP + 1)  # twice the fair share of one request among the flood's 16


def _p95(seconds: list[float]) -> float:
    return statistics.quantiles(seconds, n=20, method="inclusive")[18]


def _timed_posts(client: httpx.Client, n: int, seed: int) -> tuple[list[float], list[int]]:
    seconds, codes = [], []
    for i in range(n):
        started = time.perf_counter()
        r = client.post(PREDICT, files={"file": ("small.jpg", jpeg(seed=seed + i), "image/jpeg")})
        seconds.append(time.perf_counter() - started)
        codes.append(r.status_code)
    return seconds, codes


class RssSampler:
    """The server's resident set size every 50 ms, from a thread of this process."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.process.memory_info().rss)
            time.sleep(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """``keeneye serve`` in its own process; yields its URL and pid."""
    home = tmp_path / "home"
    settings = with_species_limits(Settings(home=home), tmp_path, rate_per_second=1e6, burst=10**6)
    register_species_model(settings, tmp_path)
    port = free_port()
    env = {
        **os.environ,
        "KEENEYE_HOME": str(home),
        "KEENEYE_CONFIG": os.devnull,
        "KEENEYE_PIPELINES__DIRS": f'["{tmp_path / "pipelines"}"]',
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "keeneye", "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        assert wait_for_port(port, timeout=60, proc=proc), log_path.read_text()[-3000:]
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while httpx.get(f"{base}/ready", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        yield base, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for_line(proc: subprocess.Popen[str], want: str, timeout: float) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    # epoll, not select(): select() refuses a descriptor numbered 1024 or more
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            ready = selector.select(0.5)
            if ready and proc.stdout.readline().strip() == want:
                return
            assert proc.poll() is None, "the flooder exited"
    raise AssertionError(f"the flooder did not say {want!r} within {timeout:.0f} s")


def test_a_flood_from_one_address_gets_429_while_another_keeps_its_latency_and_memory_stays_flat(
    server: tuple[str, int], tmp_path: Path
) -> None:
    base, pid = server
    image = tmp_path / "flood.jpg"
    image.write_bytes(jpeg(size=FLOOD_IMAGE_SIZE, seed=7))
    with httpx.Client(base_url=base, timeout=60) as good:
        _timed_posts(good, 10, seed=0)  # warm: connection, first batches, allocator
        baseline, codes = _timed_posts(good, GOOD_REQUESTS, seed=100)
        assert codes == [200] * GOOD_REQUESTS

        rss_before = psutil.Process(pid).memory_info().rss
        with RssSampler(pid) as rss:
            flooder = subprocess.Popen(
                [
                    sys.executable,
                    str(FLOOD_CLIENT),
                    base + PREDICT,
                    str(image),
                    FLOOD_ADDRESS,
                    str(FLOOD_CONNECTIONS),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                _wait_for_line(flooder, "flooding", timeout=120)  # every connection has had an answer
                flooded, codes = _timed_posts(good, GOOD_REQUESTS, seed=200)
            finally:
                flooder.send_signal(signal.SIGTERM)
                out, _ = flooder.communicate(timeout=120)
    flood: dict[str, int] = json.loads(out.strip().splitlines()[-1])

    p95_idle, p95_flood = _p95(baseline), _p95(flooded)
    growth_mib = (max(rss.samples) - rss_before) / 2**20
    image_mib = image.stat().st_size / 2**20
    print(
        f"\nflood: {flood}; other client p95 {p95_idle * 1000:.1f} ms idle, {p95_flood * 1000:.1f} ms "
        f"flooded ({p95_flood / p95_idle:.1f}×); server RSS +{growth_mib:.0f} MiB with "
        f"{FLOOD_CONNECTIONS} connections pushing {image_mib:.1f} MiB bodies"
    )
    assert codes == [200] * GOOD_REQUESTS, Counter(codes)  # the other client was never refused
    # The cap met the flood: it was refused with the cap's reason. How many refusals depends on how
    # fast the server frees slots (a quiet machine answers the tiny model quickly, so more of the
    # flood's requests find one of its 16 slots free: 117 refusals to 152 answers in one CI run);
    # that the cap held is shown by the next lines — never a 503 (the server kept slots for others)
    # and the other client never refused.
    assert flood.get("429 too_many_in_flight", 0) > 0, flood
    assert set(flood) <= {"200", "429 too_many_in_flight"}, flood  # no 503: the server kept room
    assert flood.get("200", 0) >= PER_CLIENT_CAP, flood  # its own 16 slots still served it
    assert p95_flood <= P95_RATIO * p95_idle
    assert growth_mib < 2 * SERVER_SLOTS * image_mib
