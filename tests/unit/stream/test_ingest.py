"""Accepting observations: durable before the answer, published (inline or by reference), 503 / 202 rules."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from keeneye.domain import InvalidInput, NotFound, ObservationStatus
from keeneye.serving import create_app
from keeneye.settings import BusSettings
from keeneye.store import ResultsDB, open_object_store, open_results_db
from keeneye.stream import Ingestor, IngestUnavailable, input_topic, open_bus, parse_observation
from tests.services import free_port
from tests.serving_support import jpeg
from tests.unit.stream.stream_support import bus_url, drain, stream_settings

__all__ = ["bus_url"]  # the parametrised fixture, imported for pytest


def test_accept_stores_then_publishes_inline(tmp_path: Path, bus_url: str) -> None:
    settings, name = stream_settings(tmp_path, bus_url)
    data = jpeg(seed=1)
    ingestor = Ingestor(settings)
    accepted = ingestor.accept(name, data, {"camera": "c7"}, source="folder")
    ingestor.close()

    assert accepted.published and not accepted.by_reference
    row = open_results_db(settings).get_observation(accepted.id)
    assert row is not None
    assert (row.status, row.source, row.pipeline, row.size_bytes) == ("queued", "folder", name, len(data))
    assert row.metadata == {"camera": "c7"}
    assert open_object_store(settings).get(accepted.object_key) == data
    assert row.object_key == accepted.object_key

    bus = open_bus(settings)
    with bus.subscribe([input_topic(name)], "test") as consumer:
        (msg,) = drain(consumer, 1)
    bus.close()
    assert msg.key == accepted.id.encode()
    assert msg.value == data
    assert msg.header("observation_id") == accepted.id
    assert msg.header("pipeline") == name
    assert msg.header("content_hash") == row.content_hash
    assert msg.header("content_type") == "image/jpeg"
    assert json.loads(msg.header("metadata") or "") == {"camera": "c7"}
    parsed = parse_observation(msg)
    assert parsed.data == data and parsed.inline


def test_large_image_travels_by_reference(tmp_path: Path) -> None:
    settings, name = stream_settings(tmp_path)
    settings = settings.model_copy(update={"bus": BusSettings(max_message_bytes=4096, lease_seconds=2)})
    data = jpeg(size=128, seed=2)
    assert len(data) > 4096
    ingestor = Ingestor(settings)
    accepted = ingestor.accept(name, data)
    assert accepted.by_reference and accepted.published
    bus = open_bus(settings)
    with bus.subscribe([input_topic(name)], "test") as consumer:
        (msg,) = drain(consumer, 1)
    assert msg.value == b""
    assert msg.header("object_key") == accepted.object_key
    parsed = parse_observation(msg)
    assert parsed.data is None and not parsed.inline
    assert open_object_store(settings).get(parsed.object_key or "") == data


@pytest.mark.parametrize(
    ("pipeline", "data", "error", "status"),
    [
        ("species-id", b"", "empty", 400),
        ("no-such-pipeline", b"\xff\xd8\xff", None, 404),
        ("species-id", b"GIF89a not an image we take", "unsupported_format", 415),
    ],
)
def test_door_refusals(tmp_path: Path, pipeline: str, data: bytes, error: str | None, status: int) -> None:
    settings, _ = stream_settings(tmp_path)
    ingestor = Ingestor(settings)
    if status == 404:
        with pytest.raises(NotFound, match="no-such-pipeline"):
            ingestor.accept(pipeline, data)
    else:
        with pytest.raises(InvalidInput) as info:
            ingestor.accept(pipeline, data)
        assert (info.value.reason, info.value.status) == (error, status)
    assert list(open_object_store(settings).list("observations/")) == []


def _closed_postgres() -> ResultsDB:
    return ResultsDB(f"postgresql+psycopg://keeneye@127.0.0.1:{free_port()}/keeneye")


def test_database_unreachable_is_503_and_nothing_stays(tmp_path: Path) -> None:
    settings, name = stream_settings(tmp_path)
    ingestor = Ingestor(settings, db=_closed_postgres())
    with pytest.raises(IngestUnavailable) as info:
        ingestor.accept(name, jpeg(seed=3))
    assert "results database" in info.value.message
    assert info.value.retry_after > 0
    assert list(open_object_store(settings).list("observations/")) == []  # the object was removed


def test_locked_sqlite_database_is_503_after_the_short_ingest_wait(tmp_path: Path) -> None:
    import sqlite3

    settings, name = stream_settings(tmp_path, ingest_lock_timeout_seconds=0.3)
    db = open_results_db(settings)
    db.ensure_schema()
    ingestor = Ingestor(settings, db=db)
    data = jpeg(seed=5)
    assert db.sa_url.database
    lock = sqlite3.connect(db.sa_url.database, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    started = time.monotonic()
    try:
        with pytest.raises(IngestUnavailable, match="locked"):
            ingestor.accept(name, data)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert 0.25 <= time.monotonic() - started < 5  # the ingest wait, not the 30 s busy timeout
    assert list(open_object_store(settings).list("observations/")) == []  # its object was removed
    assert ingestor.accept(name, data).status == "queued"  # lock released: accepted
    ingestor.close()


def test_http_202_then_status_and_refusals(tmp_path: Path) -> None:
    settings, name = stream_settings(tmp_path)
    data = jpeg(seed=4)
    with TestClient(create_app(settings, poll_aliases=False)) as client:
        r = client.post(
            f"/v1/pipelines/{name}/observations",
            content=data,
            headers={"content-type": "image/jpeg", "x-keeneye-metadata": '{"line": 3}'},
        )
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["status"] == "queued"
        assert body["links"]["self"] == f"/v1/observations/{body['id']}"
        assert r.headers["location"] == body["links"]["self"]
        got = client.get(body["links"]["self"]).json()
        assert (got["status"], got["metadata"], got["result"]) == ("queued", {"line": 3}, None)

        multipart = client.post(f"/v1/pipelines/{name}/observations", files={"file": ("a.jpg", data)})
        assert multipart.status_code == 202

        def refused(path: str, content: bytes, ctype: str, **headers: str) -> tuple[int, str]:
            resp = client.post(path, content=content, headers={"content-type": ctype, **headers})
            return resp.status_code, resp.json().get("reason", "")

        url = f"/v1/pipelines/{name}/observations"
        assert refused(url, b"", "image/jpeg") == (400, "empty")
        too_big = b"\xff\xd8\xff" + b"x" * (10 * 1024 * 1024)  # species-id allows 10 MiB
        assert refused(url, too_big, "image/jpeg") == (413, "too_large")
        assert refused(url, b"hello", "text/plain") == (415, "unsupported_media_type")
        assert refused(url, b"hello", "image/jpeg") == (415, "unsupported_format")
        assert refused(url, data, "image/jpeg", **{"x-keeneye-metadata": "{nope"}) == (400, "bad_metadata")
        assert refused("/v1/pipelines/nope/observations", data, "image/jpeg")[0] == 404

        # The database goes away: 503 with Retry-After, and the image is not kept.
        client.app.state.keeneye_ingestor = Ingestor(settings, db=_closed_postgres())  # type: ignore[attr-defined]
        before = {o.key for o in open_object_store(settings).list("observations/")}
        r = client.post(url, content=jpeg(seed=5), headers={"content-type": "image/jpeg"})
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) > 0
        assert r.json()["reason"] == "database_unavailable"
        assert {o.key for o in open_object_store(settings).list("observations/")} == before
    rows = open_results_db(settings).observations_with_status(name, ObservationStatus.queued)
    assert len(rows) == 2


@pytest.mark.slow
def test_broker_down_still_accepts_and_the_reconciler_publishes(tmp_path: Path) -> None:
    from keeneye.stream import Reconciler

    settings, name = stream_settings(tmp_path, f"kafka://127.0.0.1:{free_port()}")
    ingestor = Ingestor(settings)
    accepted = ingestor.accept(name, jpeg(seed=6))
    assert not accepted.published  # broker unreachable: durable and queued all the same
    t0 = time.monotonic()
    second = ingestor.accept(name, jpeg(seed=7))
    assert not second.published and time.monotonic() - t0 < 1.0  # no second wait on a dead broker
    db = open_results_db(settings)
    assert db.get_observation(accepted.id).status is ObservationStatus.queued  # type: ignore[union-attr]

    # The broker "comes back" (a reachable bus is configured): the reconciler publishes both.
    up = settings.model_copy(update={"bus_url": f"sqlite:///{tmp_path / 'bus2.db'}"})
    time.sleep(0.05)
    reconciler = Reconciler(up, name, stale_after_seconds=0.01)
    report = reconciler.run_once()
    assert report.republished == 2
    bus = open_bus(up)
    with bus.subscribe([input_topic(name)], "test") as consumer:
        ids = {m.header("observation_id") for m in drain(consumer, 2)}
    assert ids == {accepted.id, second.id}
    reconciler.close()


def test_cli_ingest_walks_a_folder_and_never_sends_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from keeneye.cli import app

    settings, name = stream_settings(tmp_path)
    monkeypatch.setenv("KEENEYE_HOME", str(settings.home))
    monkeypatch.setenv("KEENEYE_PIPELINES__DIRS", json.dumps([str(d) for d in settings.pipelines.dirs]))
    folder = tmp_path / "photos"
    (folder / "day2").mkdir(parents=True)
    (folder / "a.jpg").write_bytes(jpeg(seed=20))
    (folder / "day2" / "b.JPEG").write_bytes(jpeg(seed=21))
    (folder / "notes.txt").write_text("not an image")
    (folder / "bad.png").write_bytes(b"not a png at all")

    def run() -> dict[str, list[dict[str, str]]]:
        result = CliRunner().invoke(app, ["ingest", "--pipeline", name, str(folder), "--json"])
        assert result.exit_code == 0, result.output
        return dict(json.loads(result.stdout))

    first = run()
    assert sorted(a["file"] for a in first["accepted"]) == ["a.jpg", "day2/b.JPEG"]
    assert [(r["file"], r["reason"]) for r in first["refused"]] == [("bad.png", "unsupported_format")]
    rows = open_results_db(settings).observations_with_status(name, ObservationStatus.queued)
    assert {r.source for r in rows} == {"folder"} and len(rows) == 2
    (folder / "c.png").write_bytes(jpeg(seed=22))  # a JPEG named .png: format comes from the bytes
    second = run()
    assert [a["file"] for a in second["accepted"]] == ["c.png"] and second["refused"] == []
