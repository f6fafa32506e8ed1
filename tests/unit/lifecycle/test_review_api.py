"""The review queue over real HTTP (uvicorn on loopback): the list, the stored images, the page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keeneye.lifecycle import enqueue, review_reasons
from keeneye.pipelines import PipelineCatalog
from keeneye.serving.routes import review
from keeneye.settings import Settings
from keeneye.store import NewObservation, NewPrediction, open_object_store, open_results_db
from tests.serving_support import LiveServer, register_species_model
from tests.unit.lifecycle.support import (
    SPECIES,
    Stored,
    as_answer,
    species_jpeg,
    species_result,
    store_answer,
)

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


def with_review_routes(server: LiveServer) -> LiveServer:
    """The review router, unless app.py includes it already."""
    if not any(getattr(r, "path", "") == "/v1/pipelines/{name}/review" for r in server.app.routes):
        server.app.include_router(review.router)
    return server


@pytest.fixture
def stored(settings: Settings, tmp_path: Path) -> list[Stored]:
    register_species_model(settings, tmp_path)
    db, objects = open_results_db(settings), open_object_store(settings)
    spec = PipelineCatalog(settings).get("species-id")
    out = []
    for seed, probabilities in enumerate([[0.5, 0.3, 0.1, 0.05, 0.05], [0.3, 0.25, 0.2, 0.15, 0.1]]):
        s = store_answer(
            db, objects, spec.name, species_result(probabilities), species_jpeg(seed), fmt="jpeg"
        )
        enqueue(
            db,
            s.observation_id,
            spec.name,
            review_reasons(spec, as_answer(s.result), audit_share=0, rng_key="k"),
        )
        out.append(s)
    return out


@pytest.fixture
def server(settings: Settings, stored: list[Stored]) -> Iterator[LiveServer]:
    live = with_review_routes(LiveServer(settings, poll_aliases=False)).start()
    try:
        yield live
    finally:
        live.stop()


def test_review_list_has_the_queue_the_answers_and_the_classes(
    server: LiveServer, stored: list[Stored]
) -> None:
    body = httpx.get(f"{server.url}/v1/pipelines/species-id/review").json()
    assert (body["pipeline"], body["task"], body["decision"], body["model_version"]) == (
        "species-id",
        "classify",
        False,
        "1",
    )
    assert body["classes"] == [{"name": n, "label": lbl} for n, lbl in SPECIES]
    items = body["items"]
    assert [i["observation_id"] for i in items] == [stored[1].observation_id, stored[0].observation_id]
    assert [i["priority"] for i in items] == [0.95, 0.5]
    assert items[0]["prediction"] == stored[1].result and items[0]["reasons"] == ["low_confidence"]
    assert items[0]["image_url"] == f"/v1/observations/{stored[1].observation_id}/image"

    one = httpx.get(f"{server.url}/v1/pipelines/species-id/review", params={"limit": 1}).json()
    assert [i["observation_id"] for i in one["items"]] == [stored[1].observation_id]
    assert httpx.get(f"{server.url}/v1/pipelines/species-id/review", params={"limit": 0}).status_code == 422
    missing = httpx.get(f"{server.url}/v1/pipelines/nope/review")
    assert missing.status_code == 404 and "unknown pipeline 'nope'" in missing.json()["detail"]


def test_observation_image_bytes_and_404s(
    server: LiveServer, stored: list[Stored], settings: Settings
) -> None:
    image = httpx.get(f"{server.url}/v1/observations/{stored[0].observation_id}/image")
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/jpeg" and image.content == species_jpeg(0)
    assert image.headers["x-content-type-options"] == "nosniff"

    unknown = httpx.get(f"{server.url}/v1/observations/{'0' * 32}/image")
    assert (unknown.status_code, unknown.json()["detail"]) == (404, f"no observation '{'0' * 32}'")

    db = open_results_db(settings)
    bare = db.record_prediction(
        NewObservation(
            pipeline="species-id",
            content_hash="a" * 64,
            object_key=None,
            content_type="image/jpeg",
            size_bytes=1,
            metadata={},
            source="test",
        ),
        NewPrediction(
            model_name="species-id",
            model_version="1",
            variant="champion",
            task="classify",
            result={},
            decision=None,
            confidence=None,
            latency_ms=1.0,
        ),
    )
    not_stored = httpx.get(f"{server.url}/v1/observations/{bare}/image")
    assert (not_stored.status_code, not_stored.json()["detail"]) == (
        404,
        f"observation {bare} has no stored image",
    )

    obs = db.get_observation(stored[1].observation_id)
    assert obs is not None and obs.object_key is not None
    open_object_store(settings).delete(obs.object_key)
    gone = httpx.get(f"{server.url}/v1/observations/{stored[1].observation_id}/image")
    assert gone.status_code == 404
    assert gone.json()["detail"] == f"the image of observation {stored[1].observation_id} is no longer stored"


def test_review_page_is_served_offline(server: LiveServer) -> None:
    page = httpx.get(f"{server.url}/pipelines/species-id/review")
    assert page.status_code == 200 and 'data-pipeline="species-id"' in page.text
    assert "/static/review.js" in page.text and "http://" not in page.text and "https://" not in page.text
    script = httpx.get(f"{server.url}/static/review.js")
    assert script.status_code == 200 and "/v1/observations/" in script.text
    assert httpx.get(f"{server.url}/static/review.css").status_code == 200
    assert httpx.get(f"{server.url}/pipelines/nope/review").status_code == 404
    nav = httpx.get(f"{server.url}/review", follow_redirects=False)
    assert nav.status_code == 307 and nav.headers["location"] == "/pipelines/species-id/review"
