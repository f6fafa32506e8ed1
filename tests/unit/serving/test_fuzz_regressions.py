"""The 500s a fuzzer found (issue 18), each now a precise 4xx with the API's error body.

- ``GET /v1/alerts/11912247977507788867411902464``: an id past 64 bits reached SQL and overflowed;
- ``POST /v1/alerts/2175275925161012101120/ack`` with ``{}``: the same, on the acknowledgement;
- ``POST /v1/pipelines/line-inspection/predict`` with a 1×1 8-bit grayscale PNG as the raw body.

Ids in paths are 1 … 2⁶³−1 (``serving.routes.params``): outside that the answer is
``422 invalid_request`` naming the parameter, and the largest id still reaches the database (404).
An image with a side under the pipeline's ``input.min_side`` is ``422 image_too_small``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from keeneye.domain import Role
from keeneye.fields.boundary import FIELD_ID
from keeneye.monitoring.alerts.store import AlertStore
from keeneye.pipelines import PipelineCatalog
from keeneye.pipelines.spec import SLUG_PATTERN
from keeneye.serving.app import create_app
from keeneye.serving.routes.params import (
    FIELD_ID_PATTERN,
    MAX_ROW_ID,
    MODEL_VERSION_PATTERN,
    PIPELINE_NAME_PATTERN,
)
from keeneye.serving.schemas import INVALID_REQUEST_FIX
from keeneye.settings import Settings
from keeneye.store import open_results_db
from tests.e2e.test_predict_page import line_frame, register_line_and_crop
from tests.serving_support import jpeg, png, register_species_model
from tests.unit.pipelines.crop_support import geotiff_bytes, micasense_field

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

PAST_64_BITS = 11912247977507788867411902464
ALSO_PAST_64_BITS = 2175275925161012101120
GRAY_1X1 = png(np.full((1, 1), 128, np.uint8))


@dataclass
class Served:
    client: TestClient
    alerts: AlertStore


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Every built-in pipeline with a champion, keys required, the client an admin."""
    tmp = tmp_path_factory.mktemp("regressions")
    settings = Settings(home=tmp / "home")
    serving = settings.serving.model_copy(update={"require_api_key": True})
    settings = settings.model_copy(update={"serving": serving})
    register_species_model(settings, tmp)
    register_line_and_crop(settings, tmp)
    db = open_results_db(settings)
    _, key = db.create_api_key("admin-key", Role.admin)
    app = create_app(settings, poll_aliases=False)
    with TestClient(app, base_url="http://testserver", headers={"X-API-Key": key}) as client:
        yield Served(client, AlertStore(db))


def _firing(store: AlertStore) -> int:
    record = store.create(
        rule="QualityDrop", fingerprint=f"fp-{datetime.now(UTC).timestamp()}", severity="critical",
        state="firing", labels={"pipeline": "species-id"}, annotations={}, value=1.0, now=datetime.now(UTC),
    )  # fmt: skip
    return record.id


def _invalid(body: dict[str, object], loc: list[str], kind: str) -> None:
    assert body["reason"] == "invalid_request"
    assert body["fix"] == INVALID_REQUEST_FIX
    errors = body["errors"]
    assert isinstance(errors, list) and [e["loc"] for e in errors] == [loc]
    assert errors[0]["type"] == kind
    assert str(body["detail"]).startswith(f"{'.'.join(loc)}: ")


@pytest.mark.parametrize(
    ("alert_id", "kind"),
    [(PAST_64_BITS, "less_than_equal"), (MAX_ROW_ID + 1, "less_than_equal"), (0, "greater_than_equal")],
)
def test_an_alert_id_outside_64_bits_is_422_not_500(served: Served, alert_id: int, kind: str) -> None:
    r = served.client.get(f"/v1/alerts/{alert_id}")
    assert r.status_code == 422, r.text
    _invalid(r.json(), ["path", "alert_id"], kind)


def test_the_largest_alert_id_still_reaches_the_database(served: Served) -> None:
    r = served.client.get(f"/v1/alerts/{MAX_ROW_ID}")
    assert r.status_code == 404
    assert r.json() == {
        "reason": "not_found",
        "detail": f"alert {MAX_ROW_ID} does not exist",
        "fix": "see `keeneye alerts list --all`",
    }


def test_acknowledging_an_alert_id_past_64_bits_is_422(served: Served) -> None:
    r = served.client.post(f"/v1/alerts/{ALSO_PAST_64_BITS}/ack", json={})
    assert r.status_code == 422, r.text
    _invalid(r.json(), ["path", "alert_id"], "less_than_equal")
    alert = _firing(served.alerts)
    ok = served.client.post(f"/v1/alerts/{alert}/ack", json={})  # the same empty body on a real alert
    assert ok.status_code == 200 and ok.json()["acked_by"] == "admin-key"


def test_withdrawing_a_feedback_id_past_64_bits_is_422(served: Served) -> None:
    r = served.client.delete(f"/v1/observations/{'a' * 32}/feedback/{PAST_64_BITS}")
    assert r.status_code == 422
    _invalid(r.json(), ["path", "feedback_id"], "less_than_equal")


@pytest.mark.parametrize(
    ("path", "loc", "kind"),
    [
        ("/v1/pipelines/Species_ID", ["path", "name"], "string_pattern_mismatch"),
        ("/v1/pipelines/species-id/models/0/evaluation", ["path", "version"], "string_pattern_mismatch"),
        (f"/v1/observations/{'a' * 33}", ["path", "observation_id"], "string_too_long"),
        ("/v1/fields/North%2012", ["path", "field_id"], "string_pattern_mismatch"),
        ("/v1/smartcut/requests/not-a-uuid", ["path", "uid"], "string_pattern_mismatch"),
    ],
)
def test_ids_outside_their_format_are_422(served: Served, path: str, loc: list[str], kind: str) -> None:
    r = served.client.get(path)
    assert r.status_code == 422, r.text
    _invalid(r.json(), loc, kind)


def test_the_1x1_grayscale_png_is_image_too_small(served: Served) -> None:
    r = served.client.post(
        "/v1/pipelines/line-inspection/predict", content=GRAY_1X1, headers={"content-type": "image/png"}
    )
    assert r.status_code == 422, r.text
    assert r.json() == {
        "reason": "image_too_small",
        "detail": "the image is 1 × 1 pixels; pipeline 'line-inspection' needs at least 8 a side",
        "fix": "send the camera's frame (at least 8 × 8 pixels), or lower input.min_side in the "
        "pipeline spec",
    }
    frame = served.client.post(
        "/v1/pipelines/line-inspection/predict", content=line_frame(), headers={"content-type": "image/png"}
    )
    assert frame.status_code == 200 and frame.json()["decision"] == "DEFECT"  # a real frame still answers


MICASENSE = json.dumps({"band_map": "micasense-rededge-mx"})  # 5 bands: blue, green, red, nir, red_edge


@pytest.mark.parametrize(
    ("pipeline", "data", "ctype", "metadata"),
    [
        ("species-id", GRAY_1X1, "image/png", None),
        ("species-id", jpeg(size=7), "image/jpeg", None),
        ("line-inspection", png(np.full((1, 300, 3), 200, np.uint8)), "image/png", None),
        ("crop-health", geotiff_bytes(micasense_field(1, 1)), "image/tiff", MICASENSE),
    ],
)
def test_every_pipeline_refuses_a_sliver(
    served: Served, pipeline: str, data: bytes, ctype: str, metadata: str | None
) -> None:
    headers = {"content-type": ctype, **({"x-keeneye-metadata": metadata} if metadata else {})}
    r = served.client.post(f"/v1/pipelines/{pipeline}/predict", content=data, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["reason"] == "image_too_small"
    assert f"pipeline {pipeline!r} needs at least 8 a side" in r.json()["detail"]


def test_plain_http_refusals_carry_a_reason(served: Served) -> None:
    anonymous = served.client.get("/v1/alerts", headers={"X-API-Key": ""})
    assert anonymous.status_code == 401 and anonymous.json()["reason"] == "unauthorized"
    assert anonymous.json()["detail"].startswith("an API key is required")
    unknown = served.client.get("/v1/no-such-route")
    assert (unknown.status_code, unknown.json()) == (
        404,
        {"reason": "not_found", "detail": "Not Found", "fix": None},
    )
    wrong_method = served.client.delete("/health")
    assert wrong_method.status_code == 405 and wrong_method.json()["reason"] == "method_not_allowed"


def test_the_spec_declares_the_error_model_and_the_id_ranges(served: Served) -> None:
    spec = served.client.get("/openapi.json").json()
    alert = spec["paths"]["/v1/alerts/{alert_id}"]["get"]
    (param,) = alert["parameters"]
    assert (param["schema"]["minimum"], param["schema"]["maximum"]) == (1, 2**63 - 1)
    ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for code in ("401", "403", "404", "422", "503"):
        assert alert["responses"][code]["content"]["application/json"]["schema"] == ref, code
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # every 422 is an ErrorResponse
    error = spec["components"]["schemas"]["ErrorResponse"]
    assert set(error["required"]) == {"reason", "detail"} and "fix" in error["properties"]


def test_the_path_patterns_are_the_ones_ids_are_made_with(tmp_path: Path) -> None:
    assert PIPELINE_NAME_PATTERN == SLUG_PATTERN and FIELD_ID.pattern == FIELD_ID_PATTERN
    assert all(re.match(PIPELINE_NAME_PATTERN, n) for n in PipelineCatalog(Settings(home=tmp_path)).names())
    assert re.match(MODEL_VERSION_PATTERN, "12") and not re.match(MODEL_VERSION_PATTERN, "012")
