"""The predict page in headless Chromium (Debian's, driven by Playwright): upload a photo, read the top-3."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keeneye.settings import Settings
from tests.services import unavailable
from tests.serving_support import SPECIES, LiveServer, jpeg, live_server, register_species_model

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def wait_until(page: Any, expression: str, *, arg: Any = None, timeout: float = 30_000) -> Any:
    """``page.wait_for_function`` for pages under the strict Content-Security-Policy: Playwright's
    polls with ``eval()`` inside the page, which the policy refuses (no 'unsafe-eval'), while
    ``page.evaluate`` goes through the DevTools protocol, which it does not. ``timeout`` in ms."""
    deadline = time.monotonic() + timeout / 1000
    while not (value := page.evaluate(expression, arg)):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout / 1000:g} s: {expression}")
        page.wait_for_timeout(100)
    return value


@pytest.fixture
def served(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    register_species_model(settings, tmp_path)
    with live_server(settings) as server:
        yield server


def test_upload_a_photo_and_read_the_top3(served: LiveServer, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        unavailable("Debian chromium is not installed (make browser)")
    from playwright.sync_api import sync_playwright

    photo = tmp_path / "fish.jpg"
    data = jpeg((220, 120, 20), seed=11)
    photo.write_bytes(data)
    expected = httpx.post(
        f"{served.url}/predict", content=data, headers={"content-type": "image/jpeg"}
    ).json()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            failed: list[str] = []
            page.on("requestfailed", lambda req: failed.append(req.url))
            page.goto(served.url + "/predict")  # "/" is the overview since the app shell
            assert page.locator("#served-version").inner_text() == "1"
            page.set_input_files("#file", str(photo))
            page.wait_for_selector("#top3 li.prediction", timeout=15_000)
            rows = page.locator("#top3 li.prediction")
            assert rows.count() == 3
            classes = [rows.nth(i).get_attribute("data-class") for i in range(3)]
            labels = [rows.nth(i).locator(".label").inner_text() for i in range(3)]
            assert classes == [p_["class"] for p_ in expected["top_3_predictions"]]
            assert labels == [dict(SPECIES)[c] for c in classes]
            pct = rows.nth(0).locator(".probability").inner_text()
            assert pct == f"{expected['top_3_predictions'][0]['probability'] * 100:.1f}%"
            assert page.locator("#model-version").inner_text() == "1"
            assert page.locator("#cached").inner_text() == "from cache"  # same bytes as the API call above
            assert "ms" in page.locator("#latency").inner_text()
            page.screenshot(path=str(tmp_path / "predict.png"))
            assert not [u for u in failed if not u.startswith(served.url)]  # nothing fetched from outside
        finally:
            browser.close()
