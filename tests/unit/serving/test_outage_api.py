"""A dependency down answers 503 + Retry-After with a stable reason on every route, never a 500.

The backends are real and really unreachable (a PostgreSQL URL on a closed port, an S3 endpoint on a
closed port), swapped into a running app; the chaos tests (tests/integration/chaos/) take real
servers away under load.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from keeneye.serving import create_app
from keeneye.serving.state import AppState
from keeneye.settings import S3Settings, Settings
from keeneye.store import ResultsDB
from keeneye.store.s3_objects import S3ObjectStore
from keeneye.stream import Ingestor
from tests.services import free_port
from tests.serving_support import jpeg, register_species_model

JPEG = {"content-type": "image/jpeg"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(home=tmp_path / "home")
    register_species_model(settings, tmp_path)
    with TestClient(create_app(settings, poll_aliases=False)) as client:
        yield client


def _state(client: TestClient) -> AppState:
    state: AppState = client.app.state.keeneye  # type: ignore[attr-defined]
    return state


def _refusal(r: httpx.Response, reason: str) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "5"
    body = r.json()
    assert body["reason"] == reason
    assert body["detail"] and body["fix"]


def test_database_down_is_503_database_unavailable_on_every_kind_of_route(client: TestClient) -> None:
    state = _state(client)
    assert (
        client.post("/v1/pipelines/species-id/predict", content=jpeg(seed=1), headers=JPEG).status_code == 200
    )
    down = ResultsDB(f"postgresql+psycopg://keeneye:secret@127.0.0.1:{free_port()}/keeneye")
    state.db = state.service.db = down
    client.app.state.keeneye_ingestor = Ingestor(  # type: ignore[attr-defined]
        state.settings, catalog=state.catalog, db=down, objects=state.objects
    )
    _refusal(client.get("/v1/observations"), "database_unavailable")
    r = client.post("/v1/pipelines/species-id/predict", content=jpeg(seed=2), headers=JPEG)
    _refusal(r, "database_unavailable")
    assert "secret" not in r.text  # the database URL is masked
    _refusal(
        client.post("/v1/pipelines/species-id/observations", content=jpeg(seed=3), headers=JPEG),
        "database_unavailable",
    )


def test_object_store_down_is_503_object_store_unavailable(client: TestClient) -> None:
    state = _state(client)
    down = S3ObjectStore(
        "bucket", s3=S3Settings(endpoint_url=f"http://127.0.0.1:{free_port()}"), max_object_bytes=1 << 20
    )
    state.objects = state.service.objects = down
    client.app.state.keeneye_ingestor = Ingestor(  # type: ignore[attr-defined]
        state.settings, catalog=state.catalog, db=state.db, objects=down
    )
    _refusal(
        client.post("/v1/pipelines/species-id/predict", content=jpeg(seed=4), headers=JPEG),
        "object_store_unavailable",
    )
    _refusal(
        client.post("/v1/pipelines/species-id/observations", content=jpeg(seed=5), headers=JPEG),
        "object_store_unavailable",
    )
