"""``/v1/alerts`` on a real port and a real SQLite results database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import count

import httpx
import pytest

from keeneye.monitoring.alerts.store import AlertStore
from keeneye.settings import Settings
from keeneye.store import AlertRecord, open_results_db
from tests.serving_support import LiveServer, fast_registry_store, live_server

_fingerprints = count()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = Settings(home=tmp_path_factory.mktemp("alerts-api") / "home")
    fast_registry_store(settings)
    with live_server(settings, poll_aliases=False) as server:
        yield server


@pytest.fixture
def store(served: LiveServer) -> AlertStore:
    return AlertStore(open_results_db(served.settings))


def seed(store: AlertStore, rule: str = "QualityDrop", state: str = "firing", **labels: str) -> AlertRecord:
    now = datetime.now(UTC) - timedelta(minutes=3)
    record = store.create(
        rule=rule, fingerprint=f"fp-{next(_fingerprints)}", severity="critical", state=state,
        labels=labels, annotations={"summary": "quality dropped"}, value=1.0, now=now,
    )  # fmt: skip
    if state == "resolved":
        record = store.update(record.id, now, resolved_at=now) or record
    return record


def test_list_active_and_all(served: LiveServer, store: AlertStore) -> None:
    firing = seed(store, pipeline="species-id", version="3")
    resolved = seed(store, "DriftDetected", "resolved", pipeline="species-id")
    active = httpx.get(f"{served.url}/v1/alerts").json()
    assert active["state"] == "active"
    ids = [a["id"] for a in active["alerts"]]
    assert firing.id in ids and resolved.id not in ids
    mine = next(a for a in active["alerts"] if a["id"] == firing.id)
    assert mine["rule"] == "QualityDrop" and mine["labels"] == {"pipeline": "species-id", "version": "3"}
    assert mine["state"] == "firing" and mine["started_at"].endswith("+00:00")
    everything = httpx.get(f"{served.url}/v1/alerts", params={"state": "all", "limit": 2}).json()
    assert [a["id"] for a in everything["alerts"]] == [resolved.id, firing.id]  # newest first


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"state": "open"}, "state must be one of active, all, got 'open'"),
        ({"limit": 0}, "limit must be between 1 and 10000, got 0"),
    ],
)
def test_list_refuses_a_bad_query_with_400(
    served: LiveServer, params: dict[str, object], detail: str
) -> None:
    r = httpx.get(f"{served.url}/v1/alerts", params=params)
    assert r.status_code == 400
    assert r.json()["detail"] == detail


def test_ack_records_who_and_is_idempotent(served: LiveServer, store: AlertStore) -> None:
    alert = seed(store, pipeline="crop-health")
    r = httpx.post(f"{served.url}/v1/alerts/{alert.id}/ack", json={"by": "alice"})
    assert r.status_code == 200, r.text
    assert r.json()["acked_by"] == "alice" and r.json()["acked_at"] is not None
    again = httpx.post(f"{served.url}/v1/alerts/{alert.id}/ack", json={"by": "bob"})
    assert again.status_code == 200 and again.json()["acked_by"] == "alice"
    assert store.get(alert.id).acked_by == "alice"


def test_ack_without_a_body_names_the_caller(served: LiveServer, store: AlertStore) -> None:
    alert = seed(store, pipeline="crop-health")
    r = httpx.post(f"{served.url}/v1/alerts/{alert.id}/ack")
    assert r.status_code == 200
    assert r.json()["acked_by"] == "local"


def test_ack_of_an_unknown_or_resolved_alert(served: LiveServer, store: AlertStore) -> None:
    r = httpx.post(f"{served.url}/v1/alerts/987654/ack", json={"by": "x"})
    assert r.status_code == 404
    assert r.json()["detail"] == "alert 987654 does not exist"
    resolved = seed(store, "DriftDetected", "resolved")
    r = httpx.post(f"{served.url}/v1/alerts/{resolved.id}/ack", json={"by": "x"})
    assert r.status_code == 409
    assert r.json()["reason"] == "alert_resolved"


def test_one_alert_with_its_notifications(served: LiveServer, store: AlertStore) -> None:
    alert = seed(store, pipeline="line-inspection")
    now = datetime.now(UTC)
    store.record_notification(alert_id=alert.id, channel="hook", level=0, kind="firing", ok=True, error=None,
                              sent_at=now)  # fmt: skip
    store.record_notification(alert_id=alert.id, channel="mail", level=1, kind="escalated", ok=False,
                              error="SMTP refused", sent_at=now)  # fmt: skip
    body = httpx.get(f"{served.url}/v1/alerts/{alert.id}").json()
    assert body["id"] == alert.id
    assert [(n["channel"], n["level"], n["kind"], n["ok"], n["error"]) for n in body["notifications"]] == [
        ("hook", 0, "firing", True, None),
        ("mail", 1, "escalated", False, "SMTP refused"),
    ]
    assert httpx.get(f"{served.url}/v1/alerts/987654").status_code == 404


def test_create_and_list_silences(served: LiveServer, store: AlertStore) -> None:
    muted = seed(store, "WorkerLoadHigh", pipeline="species-id", stat="max")
    other = seed(store, "WorkerLoadHigh", pipeline="crop-health", stat="max")
    r = httpx.post(
        f"{served.url}/v1/alerts/silences",
        json={"rule": "WorkerLoadHigh", "labels": {"pipeline": "species-id"}, "duration": "90m",
              "reason": "load test", "by": "bob"},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    silence = r.json()
    assert (silence["rule"], silence["matchers"], silence["created_by"]) == (
        "WorkerLoadHigh", {"pipeline": "species-id"}, "bob",
    )  # fmt: skip
    span = datetime.fromisoformat(silence["ends_at"]) - datetime.fromisoformat(silence["starts_at"])
    assert span == timedelta(minutes=90)
    listed = httpx.get(f"{served.url}/v1/alerts/silences").json()["silences"]
    assert silence["id"] in [s["id"] for s in listed]
    alerts = {a["id"]: a["silenced"] for a in httpx.get(f"{served.url}/v1/alerts").json()["alerts"]}
    assert (alerts[muted.id], alerts[other.id]) == (True, False)


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"duration": "1h", "reason": "x"}, 400, "a silence needs a rule or at least one label matcher"),
        (
            {"rule": "Nope", "duration": "1h", "reason": "x"},
            400,
            "unknown rule 'Nope'; known: ApiErrorRateHigh",
        ),
        (
            {"rule": "DriftDetected", "duration": "soon", "reason": "x"},
            400,
            "duration: 'soon' is not a duration",
        ),
        ({"rule": "DriftDetected", "duration": "1h", "reason": "  "}, 400, "a silence needs a reason"),
        ({"rule": "DriftDetected", "duration": "1h"}, 422, None),
    ],
)
def test_bad_silences_are_refused_precisely(
    served: LiveServer, body: dict[str, object], status: int, detail: str | None
) -> None:
    r = httpx.post(f"{served.url}/v1/alerts/silences", json=body)
    assert r.status_code == status, r.text
    if detail is not None:
        assert r.json()["detail"].startswith(detail)
