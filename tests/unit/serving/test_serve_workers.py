"""``keeneye serve --workers 2``: two real processes share the port, every answer is stored, /metrics
adds both up, the limits are split between them, and SIGTERM stops both cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from keeneye.serving.state import close_state, open_state
from keeneye.settings import ServingSettings, Settings
from keeneye.store import open_results_db
from tests.services import free_port, wait_for_port
from tests.serving_support import jpeg, register_species_model, with_species_limits

pytestmark = pytest.mark.slow  # two server processes load their models: seconds


def _total(metrics: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(prefix))


def test_two_processes_share_the_port_store_everything_and_count_together(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # One test client is one address: lift the species-id limits so the burst measures storage, not them.
    settings = with_species_limits(Settings(home=home), tmp_path, rate_per_second=1e6, burst=10**6)
    register_species_model(settings, tmp_path)
    port = free_port()
    env = {
        **os.environ,
        "KEENEYE_HOME": str(home),
        "KEENEYE_CONFIG": os.devnull,
        "KEENEYE_SERVING__MAX_INFLIGHT": "128",
        "KEENEYE_SERVING__MAX_INFLIGHT_PER_CLIENT": "128",  # 40 at once from one address
        "KEENEYE_PIPELINES__DIRS": f'["{tmp_path / "pipelines"}"]',
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "keeneye", "serve", "--workers", "2", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        assert wait_for_port(port, timeout=60, proc=proc), (tmp_path / "serve.log").read_text()
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=60) as client:
            for _ in range(240):  # both processes load their model before /ready says yes
                if client.get("/ready").status_code == 200:
                    break
                asyncio.run(asyncio.sleep(0.25))

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                return await asyncio.gather(
                    *(
                        client.post(
                            "/v1/pipelines/species-id/predict",
                            files={"file": ("p.jpg", jpeg(seed=i), "image/jpeg")},
                        )
                        for i in range(40)
                    )
                )

        responses = asyncio.run(burst())
        refused = [r.text for r in responses if r.status_code != 200]
        assert [r.status_code for r in responses] == [200] * 40, refused
        ids = {r.json()["observation_id"] for r in responses}
        assert len(ids) == 40

        db = open_results_db(settings)
        for observation_id in ids:  # answered only once stored: every row and image is there
            obs = db.get_observation(observation_id)
            assert obs is not None and obs.status.value == "done"
            assert len(db.predictions_for(observation_id)) == 1
        folders = list((home / "run").glob("metrics-serve-*"))
        assert len(folders) == 1
        pids = {f.name.rsplit("_", 1)[-1] for f in folders[0].glob("*.db")}
        assert len(pids) >= 2, pids  # two serving processes wrote metrics

        metrics = httpx.get(f"{base}/metrics", timeout=30).text
        assert _total(metrics, 'keeneye_requests_total{pipeline="species-id",status="200"}') == 40
        assert _total(metrics, "keeneye_store_group_size_count") >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        log.close()
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]
    assert not list((home / "run").glob("metrics-serve-*"))  # its own metrics folder is removed


def test_each_process_enforces_its_share_of_the_limits(tmp_path: Path) -> None:
    """species-id allows 20/s with a burst of 40 and the server 64 in flight: with 2 processes each
    holds half, so the kernel's spreading of connections cannot double what a client gets."""
    settings = Settings(home=tmp_path / "home", serving=ServingSettings(processes=2, max_inflight=64))
    register_species_model(settings, tmp_path)

    async def limits() -> tuple[float, float, int]:
        state = await open_state(settings, poll_aliases=False)
        try:
            rate = state.rate["species-id"]
            return rate.rate, rate.burst, state.inflight["species-id"].limit
        finally:
            await close_state(state)

    assert asyncio.run(limits()) == (10.0, 20.0, 32)


def test_each_process_enforces_its_share_of_the_concurrency_caps(tmp_path: Path) -> None:
    """16 in flight per client address and 32 per API key for the server: 8 and 16 per process."""
    settings = Settings(home=tmp_path / "home", serving=ServingSettings(processes=2))
    register_species_model(settings, tmp_path)

    async def caps() -> tuple[int, int]:
        state = await open_state(settings, poll_aliases=False)
        try:
            return state.per_client.limit, state.per_key.limit
        finally:
            await close_state(state)

    assert asyncio.run(caps()) == (8, 16)
