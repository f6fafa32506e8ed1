"""``POST /v1/observations/{id}/feedback`` and ``GET /v1/pipelines/{name}/quality`` on a real port.

One server with a species-id champion (a real prediction to label) and a line-inspection model that
is registered without an alias (its classes check the segment labels; nothing serves it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from keeneye.domain import ObservationStatus
from keeneye.settings import Settings
from keeneye.store import open_results_db
from tests.serving_support import LiveServer, jpeg, live_server, with_species_limits
from tests.unit.monitoring.quality_support import (
    answered,
    line_manifest,
    line_result,
    register_model,
    register_species,
)

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("feedback")
    settings = with_species_limits(Settings(home=tmp / "home"), tmp, rate_per_second=1e6, burst=10**6)
    register_species(settings, tmp, accuracy=0.95, macro_precision=0.9, macro_recall=0.9)
    register_model(settings, tmp, line_manifest(metrics={"precision": 0.98, "recall": 0.96}), alias=None)
    with live_server(settings) as srv:
        yield srv


@pytest.fixture(scope="module")
def line_obs(server: LiveServer) -> str:
    """A line-inspection observation answered by the unaliased v1 (64 × 48 image)."""
    return answered(open_results_db(server.settings), "line-inspection", line_result("OK"), version="1")


def _predict(server: LiveServer) -> dict[str, Any]:
    r = httpx.post(
        f"{server.url}/v1/pipelines/species-id/predict", files={"file": ("f.jpg", jpeg(), "image/jpeg")}
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _post(server: LiveServer, obs: str, body: Any, **kwargs: Any) -> httpx.Response:
    if "content" not in kwargs:
        kwargs["json"] = body
    kwargs.setdefault("headers", {"content-type": "application/json"})
    return httpx.post(f"{server.url}/v1/observations/{obs}/feedback", timeout=30, **kwargs)


def test_feedback_is_stored_counted_and_answered_201(server: LiveServer) -> None:
    prediction = _predict(server)
    obs = prediction["observation_id"]
    r = _post(server, obs, {"class": "esox_lucius", "author": "ana"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["location"] == f"/v1/observations/{obs}"
    assert body["observation_id"] == obs and body["pipeline"] == "species-id"
    assert (body["label"], body["source"], body["author"]) == ({"class": "esox_lucius"}, "api", "ana")
    assert body["model_version"] == prediction["model_version"]
    [stored] = open_results_db(server.settings).feedback_for(obs)
    assert (stored.id, stored.label, stored.author, stored.source) == (
        body["id"], {"class": "esox_lucius"}, "ana", "api"
    )  # fmt: skip
    again = _post(server, obs, {"class": "perca_fluviatilis", "source": "review"})
    assert again.status_code == 201 and again.json()["id"] > body["id"]
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'keeneye_feedback_total{pipeline="species-id",source="api"} 1.0' in metrics
    assert 'keeneye_feedback_total{pipeline="species-id",source="review"} 1.0' in metrics


def test_segment_label_is_normalised_and_decided(server: LiveServer, line_obs: str) -> None:
    triangle = [[2, 2, 12, 2, 2, 10]]
    r = _post(
        server,
        line_obs,
        {
            "instances": [
                {"class": "scratch", "segmentation": triangle},
                {"class": "dent", "bbox": [30, 20, 4, 4]},
            ]
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["label"] == {
        "instances": [
            {
                "class": "scratch",
                "segmentation": [[2.0, 2.0, 12.0, 2.0, 2.0, 10.0]],
                "bbox": [2.0, 2.0, 10.0, 8.0],
            },
            {"class": "dent", "bbox": [30.0, 20.0, 4.0, 4.0]},
        ],
        "decision": "DEFECT",  # a defect class was labelled: the item is DEFECT
    }
    assert _post(server, line_obs, {"decision": "ok"}).json()["label"] == {"decision": "OK"}
    assert _post(server, line_obs, {"instances": []}).json()["label"] == {"instances": [], "decision": "OK"}


def _box(x: float, y: float, w: float, h: float, cls: str = "scratch") -> dict[str, Any]:
    return {"instances": [{"class": cls, "bbox": [x, y, w, h]}]}


def _poly(*coords: float) -> dict[str, Any]:
    return {"instances": [{"class": "scratch", "segmentation": [list(coords)]}]}


# (which observation, body or raw bytes, extra request arguments) → (status, reason)
SPECIES_CASES: list[Any] = [
    pytest.param({}, {}, (422, "missing_label"), id="no-label"),
    pytest.param({"class": "esox_lucius", "decision": "OK"}, {}, (422, "ambiguous_label"), id="two-labels"),
    pytest.param({"class": "esox_lucius", "colour": "red"}, {}, (422, "unknown_field"), id="unknown-field"),
    pytest.param({"class": "not_a_fish"}, {}, (422, "unknown_class"), id="unknown-class"),
    pytest.param({"class": ""}, {}, (422, "unknown_class"), id="empty-class"),
    pytest.param({"class": 3}, {}, (422, "unknown_class"), id="class-not-a-string"),
    pytest.param({"decision": "OK"}, {}, (422, "wrong_label_kind"), id="decision-on-classify"),
    pytest.param({"instances": []}, {}, (422, "wrong_label_kind"), id="instances-on-classify"),
    pytest.param({"class": "esox_lucius", "author": "x" * 300}, {}, (422, "bad_author"), id="long-author"),
    pytest.param({"class": "esox_lucius", "source": "Bad Source"}, {}, (422, "bad_source"), id="bad-source"),
    pytest.param(["esox_lucius"], {}, (400, "bad_request"), id="array-body"),
    pytest.param(None, {"content": b"{not json"}, (400, "bad_json"), id="not-json"),
    pytest.param(None, {"content": b""}, (400, "bad_request"), id="empty-body"),
    pytest.param(
        None,
        {"content": b'{"class": "esox_lucius"}', "headers": {"content-type": "text/plain"}},
        (415, "unsupported_media_type"),
        id="text-plain",
    ),
    pytest.param(
        None,
        {"content": b'{"class": "' + b"x" * (3 * 1024 * 1024) + b'"}'},
        (413, "too_large"),
        id="huge-body",
    ),
]

LINE_CASES: list[Any] = [
    pytest.param({"decision": "MAYBE"}, (422, "bad_decision"), id="bad-decision"),
    pytest.param({"class": "scratch"}, (422, "wrong_label_kind"), id="class-on-segment"),
    pytest.param(_box(1, 1, 4, 4, cls="rust"), (422, "unknown_class"), id="instance-unknown-class"),
    pytest.param(_box(1, 1, 4, 4, cls="background"), (422, "unknown_class"), id="background-is-no-instance"),
    pytest.param({"instances": {"class": "scratch"}}, (422, "bad_instances"), id="instances-not-array"),
    pytest.param({"instances": ["scratch"]}, (422, "bad_instances"), id="instance-not-object"),
    pytest.param({"instances": [{"class": "scratch"}]}, (422, "bad_instances"), id="no-geometry"),
    pytest.param(
        {"instances": [{"class": "scratch", "box": [1, 1, 2, 2]}]}, (422, "bad_instances"), id="typo-key"
    ),
    pytest.param(_box(1, 1, 0, 4), (422, "bad_geometry"), id="zero-width"),
    pytest.param(_box(1, 1, -3, 4), (422, "bad_geometry"), id="negative-height"),
    pytest.param(_box(60, 1, 10, 4), (422, "bad_geometry"), id="bbox-leaves-image"),
    pytest.param(
        {"instances": [{"class": "scratch", "bbox": [1, 2, 3]}]}, (422, "bad_geometry"), id="bbox-3"
    ),
    pytest.param(
        {"instances": [{"class": "scratch", "bbox": [1, 2, True, 4]}]}, (422, "bad_geometry"), id="bool"
    ),
    pytest.param(_poly(1, 1, 5, 1, 5), (422, "bad_geometry"), id="odd-coordinates"),
    pytest.param(_poly(1, 1, 5, 1), (422, "bad_geometry"), id="two-points"),
    pytest.param(_poly(1, 1, 5, 5, 9, 9), (422, "bad_geometry"), id="no-area"),
    pytest.param(_poly(1, 1, 500, 1, 1, 5), (422, "bad_geometry"), id="polygon-leaves-image"),
    pytest.param(
        {"instances": [{"class": "scratch", "segmentation": {"counts": "abc", "size": [48, 64]}}]},
        (422, "bad_geometry"),
        id="rle",
    ),
    pytest.param(
        {"instances": [{"class": "scratch", "segmentation": [[1, 1, "a", 1, 1, 5]]}]},
        (422, "bad_geometry"),
        id="string-coordinate",
    ),
    pytest.param(
        {"instances": [{"class": "scratch", "bbox": [1, 1, 2, 2]}] * 1001},
        (413, "too_many_instances"),
        id="1001",
    ),
]


@pytest.mark.parametrize(("body", "kwargs", "expected"), SPECIES_CASES)
def test_bad_classify_feedback_is_refused_precisely(
    server: LiveServer, body: Any, kwargs: dict[str, Any], expected: tuple[int, str]
) -> None:
    obs = _predict(server)["observation_id"]
    r = _post(server, obs, body, **kwargs)
    assert (r.status_code, r.json()["reason"]) == expected, r.text
    assert open_results_db(server.settings).feedback_for(obs) == []


@pytest.mark.parametrize(("body", "expected"), LINE_CASES)
def test_bad_segment_feedback_is_refused_precisely(
    server: LiveServer, line_obs: str, body: Any, expected: tuple[int, str]
) -> None:
    before = len(open_results_db(server.settings).feedback_for(line_obs))
    r = _post(server, line_obs, body)
    assert (r.status_code, r.json()["reason"]) == expected, r.text
    assert len(open_results_db(server.settings).feedback_for(line_obs)) == before


def test_nan_coordinates_are_refused(server: LiveServer, line_obs: str) -> None:
    raw = b'{"instances": [{"class": "scratch", "bbox": [NaN, 1, 2, 2]}]}'  # Python's JSON reads NaN
    r = _post(server, line_obs, None, content=raw, headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["reason"]) == (422, "bad_geometry")


def test_unknown_or_unfinished_observations(server: LiveServer) -> None:
    r = _post(server, "0" * 32, {"class": "esox_lucius"})
    assert (r.status_code, r.json()["reason"]) == (404, "not_found")
    r = _post(server, "../../etc", {"class": "esox_lucius"})
    assert r.status_code == 404
    db = open_results_db(server.settings)
    queued = db.create_observation("species-id", "h", None, "image/jpeg", 1, {}, "test")
    r = _post(server, queued, {"class": "esox_lucius"})
    assert (r.status_code, r.json()["reason"]) == (409, "not_done")
    assert "queued" in r.json()["detail"]
    db.set_status(queued, ObservationStatus.rejected, "corrupt_image")
    assert _post(server, queued, {"class": "esox_lucius"}).status_code == 409


def test_server_keeps_serving_after_refusals(server: LiveServer) -> None:
    obs = _predict(server)["observation_id"]
    for body in ({}, {"class": "nope"}, {"instances": [{"class": "x"}] * 5000}):
        assert _post(server, obs, body).status_code in (413, 422)
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert _post(server, obs, {"class": "sander_lucioperca"}).status_code == 201


def test_quality_endpoint(server: LiveServer) -> None:
    obs = _predict(server)
    right = obs["predicted_class"]
    assert _post(server, obs["observation_id"], {"class": right}).status_code == 201
    r = httpx.get(f"{server.url}/v1/pipelines/species-id/quality", timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["pipeline"], body["kind"], body["min_feedback"], body["drop_threshold"]) == (
        "species-id", "classify", 20, 0.1
    )  # fmt: skip
    assert body["reference_names"]["precision"] == "macro_precision"
    [w] = [w for w in body["windows"] if w["variant"] == "champion"]
    assert w["model_version"] == obs["model_version"]
    assert w["n"] >= 1 and 0.0 <= w["metrics"]["accuracy"] <= 1.0
    assert w["reference"]["accuracy"] == 0.95 and w["drop"] is False  # far fewer than 20 labels
    missing = httpx.get(f"{server.url}/v1/pipelines/no-such/quality")
    assert (missing.status_code, missing.json()["reason"]) == (404, "not_found")
    line = httpx.get(f"{server.url}/v1/pipelines/line-inspection/quality").json()
    assert line["kind"] == "ok-defect"
    assert json.dumps(line)  # plain JSON all the way down
