"""The results database, run against every backend: SQLite (embedded) and a real PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.exc import StatementError

import keeneye.store
from keeneye.domain import ConfigError, Decision, NotFound, ObservationStatus, Role, Variant
from keeneye.settings import Settings
from keeneye.store import (
    Completion,
    NewObservation,
    NewPrediction,
    ResultsDB,
    insert_ignoring_conflicts,
    open_results_db,
)
from keeneye.store.db import close_results_dbs, opened_results_dbs
from keeneye.store.schema import Base, ObservationRow, ReviewItemRow

TABLES = {
    "observations",
    "predictions",
    "feedback",
    "model_events",
    "alerts",
    "api_keys",
    "drift_partials",
    "drift_reports",
    "alert_silences",
    "alert_notifications",
    "training_runs",
    "rollouts",
    "review_queue",
    "smartcut_requests",
    "fields",
    "field_flights",
}
Q, P = ObservationStatus.queued, ObservationStatus.processing
# The newest migration file: the head every fresh database reaches (the chain is checked below).
HEAD = max(
    p.name[:4] for p in (Path(keeneye.store.__file__).parent / "migrations" / "versions").glob("[0-9]*.py")
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend, never migrated."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def db(url: str) -> Iterator[ResultsDB]:
    results = ResultsDB(url)
    results.upgrade()
    yield results
    results.close()


def new_observation(db: ResultsDB, pipeline: str = "species-id", **overrides: Any) -> str:
    fields: dict[str, Any] = {
        "pipeline": pipeline,
        "content_hash": "ab" * 32,
        "object_key": "observations/x.jpg",
        "content_type": "image/jpeg",
        "size_bytes": 1234,
        "metadata": {"camera": "c1"},
        "source": "http",
    }
    fields.update(overrides)
    return db.create_observation(**fields)


def prediction(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "pipeline": "species-id",
        "model_name": "species-id",
        "model_version": "3",
        "variant": Variant.champion,
        "task": "classify",
        "result": {"predicted_class": "salmon", "top_3_predictions": [["salmon", 0.9]]},
        "decision": None,
        "confidence": 0.9,
        "latency_ms": 12.5,
        "timings": {"decode": 1.5, "infer": 9.0},
    }
    fields.update(overrides)
    return fields


def _completion(observation_id: str, **overrides: Any) -> Completion:
    fields = prediction(**overrides)
    return Completion(observation_id, fields.pop("pipeline"), NewPrediction(**fields))


def age(db: ResultsDB, observation_id: str, seconds: float) -> None:
    """Set updated_at back as if nobody had touched the row for ``seconds``."""
    with db.session() as s:
        s.execute(
            sa.update(ObservationRow)
            .where(ObservationRow.id == observation_id)
            .values(updated_at=datetime.now(UTC) - timedelta(seconds=seconds))
        )


# --------------------------------------------------------------------------------------------------
# Schema and migrations
# --------------------------------------------------------------------------------------------------


def test_upgrade_creates_every_table_at_head(db: ResultsDB) -> None:
    assert set(sa.inspect(db.engine).get_table_names()) == TABLES | {"alembic_version"}
    assert db.current_revision() == db.head_revision() == HEAD
    db.ensure_schema()  # already at head: a no-op
    assert db.current_revision() == HEAD


def test_migrated_schema_matches_the_models(db: ResultsDB) -> None:
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []
        # The comparison is live: a column the migration lacks shows up as a difference.
        extra = sa.MetaData()
        for table in Base.metadata.sorted_tables:
            table.to_metadata(extra)
        extra.tables["alerts"].append_column(sa.Column("extra", sa.Integer))
        diffs = compare_metadata(ctx, extra)
        assert [(d[0], d[2], d[3].name) for d in diffs] == [("add_column", "alerts", "extra")]


def test_concurrent_first_starts_migrate_once(url: str) -> None:
    fresh = ResultsDB(url)
    assert fresh.current_revision() is None
    head = fresh.head_revision()
    assert fresh.check().detail == f"schema at revision none, code expects {head}; run `keeneye db upgrade`"
    # Several processes starting together all call ensure_schema; the migration lock serialises them.
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def start() -> None:
        own = ResultsDB(url)
        try:
            barrier.wait()
            own.ensure_schema()
        except BaseException as exc:
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert fresh.current_revision() == HEAD
    assert set(sa.inspect(fresh.engine).get_table_names()) == TABLES | {"alembic_version"}
    fresh.close()


# --------------------------------------------------------------------------------------------------
# Observations
# --------------------------------------------------------------------------------------------------


def test_observation_round_trip(db: ResultsDB) -> None:
    before = datetime.now(UTC)
    metadata = {"field": "поле-7 🌱", "gps": [55.75, 37.61], "nested": {"ok": True, "none": None}}
    obs_id = new_observation(db, metadata=metadata, source="bus")
    after = datetime.now(UTC)

    rec = db.get_observation(obs_id)
    assert rec is not None
    assert len(obs_id) == 32 and int(obs_id, 16) >= 0
    assert (rec.id, rec.pipeline, rec.status, rec.reason) == (
        obs_id,
        "species-id",
        ObservationStatus.queued,
        None,
    )
    assert (rec.content_hash, rec.object_key, rec.content_type, rec.size_bytes) == (
        "ab" * 32,
        "observations/x.jpg",
        "image/jpeg",
        1234,
    )
    assert (rec.metadata, rec.source, rec.attempts) == (metadata, "bus", 0)
    assert rec.created_at.tzinfo is UTC and rec.updated_at.tzinfo is UTC
    assert before <= rec.created_at == rec.updated_at <= after
    assert (rec.claimed_at, rec.completed_at) == (None, None)
    assert db.get_observation("0" * 32) is None


def test_creating_an_existing_id_again_records_nothing_twice(db: ResultsDB) -> None:
    obs_id = new_observation(db, id="f" * 32, metadata={"first": 1})
    assert new_observation(db, id="f" * 32, metadata={"second": 2}) == obs_id == "f" * 32
    rec = db.get_observation(obs_id)
    assert rec is not None and rec.metadata == {"first": 1}
    with db.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(ObservationRow)) == 1


def test_set_status_moves_and_reports_whether_it_changed(db: ResultsDB) -> None:
    obs_id = new_observation(db)
    assert db.set_status(obs_id, P, expect={Q}) is True
    claimed = db.get_observation(obs_id)
    assert claimed is not None
    assert (claimed.status, claimed.attempts, claimed.completed_at) == (P, 1, None)
    assert claimed.claimed_at is not None and claimed.claimed_at.tzinfo is UTC

    assert db.set_status(obs_id, P, expect={Q}) is False  # already claimed
    assert db.set_status(obs_id, ObservationStatus.rejected, "corrupt_image", expect={P}) is True
    rejected = db.get_observation(obs_id)
    assert rejected is not None
    assert (rejected.status, rejected.reason, rejected.attempts) == (
        ObservationStatus.rejected,
        "corrupt_image",
        1,
    )
    assert rejected.completed_at is not None and rejected.completed_at >= claimed.claimed_at
    assert db.set_status("0" * 32, P) is False


def test_two_claimers_exactly_one_wins_each_observation(db: ResultsDB) -> None:
    ids = [new_observation(db) for _ in range(20)]
    barrier = threading.Barrier(2)
    wins: dict[str, list[str]] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def claimer(name: str) -> None:
        try:
            barrier.wait()
            for obs_id in ids:
                if db.set_status(obs_id, P, expect={Q}):
                    wins[name].append(obs_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in wins]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert sorted(wins["a"] + wins["b"]) == sorted(ids)  # every one claimed, none twice
    assert all(r is not None and r.attempts == 1 for r in map(db.get_observation, ids))


def test_claim_stale_returns_only_old_rows_once(db: ResultsDB) -> None:
    old_queued = new_observation(db)
    old_processing = new_observation(db)
    db.set_status(old_processing, P)
    old_done = new_observation(db)
    db.set_status(old_done, ObservationStatus.done)
    fresh = new_observation(db)
    other_pipeline = new_observation(db, pipeline="crop-health")
    for obs_id in (old_queued, old_processing, old_done, other_pipeline):
        age(db, obs_id, 600)
    age(db, old_queued, 900)  # the oldest comes first

    assert db.claim_stale("species-id", 300, {Q, P}) == [old_queued, old_processing]
    assert db.claim_stale("species-id", 300, {Q, P}) == []  # claimed: updated_at was touched
    assert db.claim_stale(None, 300, {Q}, limit=5) == [other_pipeline]
    assert fresh in db.claim_stale(None, 0, {Q})  # with no age limit a fresh row counts too
    rec = db.get_observation(old_processing)
    assert rec is not None and rec.status is P


def test_keep_claimed_touches_only_processing_rows_so_they_are_not_stale(db: ResultsDB) -> None:
    busy, waiting, done = new_observation(db), new_observation(db), new_observation(db)
    db.set_status(busy, P)
    db.set_status(done, ObservationStatus.done)
    for obs_id in (busy, waiting, done):
        age(db, obs_id, 600)
    assert db.keep_claimed([busy, waiting, done, "no-such-id"]) == 1
    assert db.keep_claimed([]) == 0
    assert db.claim_stale("species-id", 300, {Q, P}) == [waiting]  # the busy one was kept
    rec = db.get_observation(busy)
    assert rec is not None and rec.status is P and rec.attempts == 1  # keeping is not a new attempt


def test_delete_observation_takes_its_predictions_and_feedback(db: ResultsDB) -> None:
    obs_id = new_observation(db)
    db.save_prediction(obs_id, **prediction())
    db.add_feedback(obs_id, {"class": "salmon"}, "api")
    assert db.delete_observation(obs_id) is True
    assert db.get_observation(obs_id) is None
    assert (db.count_predictions(), db.feedback_for(obs_id)) == (0, [])
    assert db.delete_observation(obs_id) is False


# --------------------------------------------------------------------------------------------------
# Predictions (invariant 2: unique on observation, model version, variant)
# --------------------------------------------------------------------------------------------------


def test_save_prediction_is_idempotent_per_model_version_and_variant(db: ResultsDB) -> None:
    obs_id = new_observation(db)
    assert db.save_prediction(obs_id, **prediction()) is True
    assert db.save_prediction(obs_id, **prediction(confidence=0.1)) is False
    assert db.count_predictions() == 1
    assert db.save_prediction(obs_id, **prediction(variant=Variant.shadow, model_version="4")) is True
    assert db.save_prediction(obs_id, **prediction(variant=Variant.canary)) is True
    assert (db.count_predictions(), db.count_predictions("species-id"), db.count_predictions("other")) == (
        3,
        3,
        0,
    )

    first, shadow, canary = db.predictions_for(obs_id)
    assert (first.variant, shadow.variant, canary.variant) == (
        Variant.champion,
        Variant.shadow,
        Variant.canary,
    )
    assert (first.model_name, first.model_version, first.task) == ("species-id", "3", "classify")
    assert first.confidence == 0.9  # the first write stays
    assert first.result == {"predicted_class": "salmon", "top_3_predictions": [["salmon", 0.9]]}
    assert (first.latency_ms, first.timings, first.decision) == (12.5, {"decode": 1.5, "infer": 9.0}, None)
    assert first.created_at.tzinfo is UTC


def test_save_prediction_for_an_unknown_observation_is_not_found(db: ResultsDB) -> None:
    with pytest.raises(NotFound, match=r"observation 0{32} does not exist"):
        db.save_prediction("0" * 32, **prediction())
    assert db.count_predictions() == 0


def test_complete_observation_saves_prediction_and_done_together(db: ResultsDB) -> None:
    obs_id = new_observation(db)
    db.set_status(obs_id, P)
    fields = prediction(decision=Decision.defect, task="segment", result={"instances": []})
    assert db.complete_observation(obs_id, **fields) is True
    rec = db.get_observation(obs_id)
    assert rec is not None and rec.status is ObservationStatus.done and rec.completed_at is not None
    [saved] = db.predictions_for(obs_id)
    assert (saved.decision, saved.task) == (Decision.defect, "segment")
    # A re-delivered message completes again without a second prediction.
    assert db.complete_observation(obs_id, **fields) is False
    assert db.count_predictions() == 1


def test_complete_observation_is_all_or_nothing(db: ResultsDB) -> None:
    obs_id = new_observation(db)
    db.set_status(obs_id, P)
    # The status update runs first; the insert then fails (a set is not JSON): both roll back.
    with pytest.raises((StatementError, TypeError), match="not JSON serializable"):
        db.complete_observation(obs_id, **prediction(result={"classes": {"salmon"}}))
    rec = db.get_observation(obs_id)
    assert rec is not None and (rec.status, rec.completed_at) == (P, None)
    assert db.count_predictions() == 0

    with pytest.raises(NotFound):
        db.complete_observation("0" * 32, **prediction())
    assert db.count_predictions() == 0


# --------------------------------------------------------------------------------------------------
# Feedback, model events, alerts
# --------------------------------------------------------------------------------------------------


def test_feedback_is_stored_and_refused_for_unknown_observations(db: ResultsDB) -> None:
    obs_id = new_observation(db)
    first = db.add_feedback(obs_id, {"class": "лосось"}, "api", author="ana")
    second = db.add_feedback(obs_id, {"instances": [{"class": "scratch", "box": [1, 2, 3, 4]}]}, "review")
    assert second > first
    got = db.feedback_for(obs_id)
    assert [(f.id, f.label, f.source, f.author) for f in got] == [
        (first, {"class": "лосось"}, "api", "ana"),
        (second, {"instances": [{"class": "scratch", "box": [1, 2, 3, 4]}]}, "review", None),
    ]
    with pytest.raises(NotFound, match=r"observation 0{32} does not exist"):
        db.add_feedback("0" * 32, {"decision": "OK"}, "api")


def test_model_events_come_newest_first(db: ResultsDB) -> None:
    db.record_model_event("line-inspection", "registered", model_version="1", actor="trainer")
    db.record_model_event("species-id", "registered", model_version="9", actor="trainer")
    db.record_model_event(
        "line-inspection", "promoted", model_version="2", from_version="1", alias="champion",
        actor="ops", reason="beat champion", details={"recall": 0.97},
    )  # fmt: skip
    last = db.record_model_event(
        "line-inspection", "rolled_back", model_version="1", from_version="2", actor="ops"
    )

    events = db.model_events("line-inspection")
    assert [(e.event, e.model_version) for e in events] == [
        ("rolled_back", "1"),
        ("promoted", "2"),
        ("registered", "1"),
    ]
    assert events[0].id == last and events[0].created_at.tzinfo is UTC
    promoted = events[1]
    assert (promoted.from_version, promoted.alias, promoted.actor) == ("1", "champion", "ops")
    assert (promoted.reason, promoted.details) == ("beat champion", {"recall": 0.97})
    assert [e.event for e in db.model_events("line-inspection", limit=1)] == ["rolled_back"]


def test_alert_lifecycle(db: ResultsDB) -> None:
    labels = {"replica": "api-1"}
    pending = db.upsert_alert(
        "HighLoad", "f1", severity="critical", state="pending", labels=labels, value=0.85
    )
    firing = db.upsert_alert("HighLoad", "f1", severity="critical", state="firing", value=0.91)
    assert firing.id == pending.id and firing.fired_at is not None and firing.started_at == pending.started_at
    assert (firing.labels, firing.value, firing.escalation_level) == (labels, 0.91, 0)
    assert [a.id for a in db.active_alerts()] == [pending.id]
    assert db.ack_alert(firing.id, "oncall") is True
    assert db.active_alerts()[0].acked_by == "oncall"

    resolved = db.upsert_alert("HighLoad", "f1", severity="critical", state="resolved")
    assert resolved.id == pending.id and resolved.resolved_at is not None
    assert db.active_alerts() == []
    again = db.upsert_alert("HighLoad", "f1", severity="critical", state="firing")
    assert again.id != pending.id  # a new instance; the resolved one stays as history
    with pytest.raises(ValueError, match="alert state 'burning'"):
        db.upsert_alert("HighLoad", "f1", severity="critical", state="burning")


# --------------------------------------------------------------------------------------------------
# Health and configuration
# --------------------------------------------------------------------------------------------------


def test_check_reports_version_and_revision(db: ResultsDB) -> None:
    health = db.check()
    assert health.reachable is True and health.setting == "KEENEYE_DATABASE_URL"
    assert health.version.startswith("SQLite 3." if db.backend == "sqlite" else "PostgreSQL ")
    assert health.detail == f"schema at revision {HEAD}"


def test_check_on_a_closed_port_is_quick_and_one_line() -> None:
    unreachable = ResultsDB("postgresql+psycopg://nobody@127.0.0.1:1/x")
    start = time.monotonic()
    health = unreachable.check()
    assert time.monotonic() - start < 5
    assert health.reachable is False and health.version == ""
    assert "Connection refused" in health.detail or "connection failed" in health.detail
    assert "\n" not in health.detail and "Traceback" not in health.detail
    assert "KEENEYE_DATABASE_URL" in health.fix


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://x", "scheme 'mysql' in 'mysql://x' is not supported"),
        ("not a url", "no scheme in 'not a url' is not supported"),
        ("sqlite", "no scheme in 'sqlite' is not supported"),
        ("sqlite://", "'sqlite://' names no database file"),
        ("sqlite:///:memory:", "'sqlite:///:memory:' names no database file"),
        ("postgresql://h:notaport/db", "malformed URL"),
    ],
)
def test_bad_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^KEENEYE_DATABASE_URL: ") as caught:
        ResultsDB(url)
    assert message in caught.value.message
    assert caught.value.fix


def test_open_results_db_creates_the_folder_and_maps_plain_postgresql(settings: Settings) -> None:
    assert not settings.home.exists()
    db = open_results_db(settings)
    assert settings.home.is_dir() and db.url == settings.database_url
    db.close()
    pg = ResultsDB("postgresql://user:secret@db.example:5432/keeneye")
    assert (pg.engine.dialect.name, pg.engine.dialect.driver) == ("postgresql", "psycopg")
    assert repr(pg) == "ResultsDB('postgresql://user:***@db.example:5432/keeneye')"


# --------------------------------------------------------------------------------------------------
# Concurrency on one SQLite file (WAL): separate processes migrate and write at the same time
# --------------------------------------------------------------------------------------------------

WRITER = """
import sys, time
from pathlib import Path
from keeneye.store import ResultsDB
url, name, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
db = ResultsDB(url)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
db.ensure_schema()
for i in range(n):
    db.create_observation("p", f"{i:064x}", None, "image/png", i, {"writer": name, "i": i}, "test")
print("done", flush=True)
"""


def test_processes_write_one_sqlite_file_concurrently(tmp_path: Path) -> None:
    url, go, n = f"sqlite:///{tmp_path / 'shared.db'}", tmp_path / "go", 150
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, name, str(n), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("w1", "w2", "w3")
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    go.touch()  # all start migrating and writing at once
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outputs]

    db = ResultsDB(url)
    with db.session() as s:
        rows = s.execute(sa.select(ObservationRow.metadata_)).scalars().all()
    assert sorted((m["writer"], m["i"]) for m in rows) == sorted(
        (w, i) for w in ("w1", "w2", "w3") for i in range(n)
    )
    assert db.current_revision() == HEAD
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    db.close()


def test_an_unwritable_sqlite_folder_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"^KEENEYE_DATABASE_URL: cannot create the folder .*file/sub"):
        ResultsDB(f"sqlite:///{tmp_path / 'file' / 'sub' / 'keeneye.db'}")


# --------------------------------------------------------------------------------------------------
# Synchronous answers and API keys (serving)
# --------------------------------------------------------------------------------------------------


def _record(db: ResultsDB, **overrides: Any) -> str:
    kwargs: dict[str, Any] = dict(
        pipeline="species-id",
        content_hash="a" * 64,
        object_key="observations/x.jpg",
        content_type="image/jpeg",
        size_bytes=10,
        metadata={"pond": "A7"},
        source="http",
        model_name="species-id",
        model_version="3",
        variant=Variant.champion,
        task="classify",
        result={"predicted_class": "esox_lucius"},
        decision=None,
        confidence=0.9,
        latency_ms=12.5,
        timings={"infer": 4.0},
    )
    kwargs.update(overrides)
    observation = {k: kwargs.pop(k) for k in list(kwargs) if k in NewObservation.__dataclass_fields__}
    return db.record_prediction(NewObservation(**observation), NewPrediction(**kwargs))


def test_record_prediction_writes_a_done_observation_and_its_prediction(db: ResultsDB) -> None:
    obs_id = _record(db)
    obs = db.get_observation(obs_id)
    assert obs is not None
    assert (obs.status, obs.attempts, obs.metadata) == (ObservationStatus.done, 1, {"pond": "A7"})
    assert obs.completed_at is not None
    preds = db.predictions_for(obs_id)
    assert [(p.model_version, p.variant, p.result) for p in preds] == [
        ("3", "champion", {"predicted_class": "esox_lucius"})
    ]


def test_record_prediction_is_all_or_nothing(db: ResultsDB) -> None:
    before = (db.count_predictions(), len(db.observations_with_status("species-id", "done")))
    with pytest.raises(ValueError):
        _record(db, variant="not-a-variant")  # refused while building the insert: nothing written
    assert (db.count_predictions(), len(db.observations_with_status("species-id", "done"))) == before


def test_observations_with_status_newest_first(db: ResultsDB) -> None:
    first = _record(db)
    second = _record(db)
    rejected = db.create_observation(
        "species-id",
        "b" * 64,
        "quarantine/q.bin",
        "application/octet-stream",
        3,
        {},
        "http",
        status=ObservationStatus.rejected,
    )
    assert [o.id for o in db.observations_with_status("species-id", "done")] == [second, first]
    assert [o.id for o in db.observations_with_status("species-id", ObservationStatus.rejected)] == [rejected]
    assert db.observations_with_status("crop-health", "done") == []


def test_api_keys_are_hashed_verified_and_revoked(db: ResultsDB) -> None:
    key_id, secret = db.create_api_key("field-app")
    assert secret.startswith("ke_") and len(secret) > 30
    assert db.verify_api_key(secret) == key_id
    assert db.verify_api_key(secret + "x") is None
    listed = db.list_api_keys()
    assert [(k.id, k.name, k.prefix, k.revoked_at) for k in listed] == [
        (key_id, "field-app", secret[:10], None)
    ]
    with db.session() as s:
        stored = s.execute(sa.text("SELECT key_hash FROM api_keys")).scalar_one()
    assert secret not in stored and len(stored) == 64
    assert db.revoke_api_key(key_id) is True
    assert db.revoke_api_key(key_id) is False
    assert db.verify_api_key(secret) is None


def test_api_keys_carry_a_role(db: ResultsDB) -> None:
    viewer_id, viewer = db.create_api_key("wall-screen", Role.viewer)
    _, operator = db.create_api_key("field-app")
    found = db.find_api_key(viewer)
    assert found is not None and (found.id, found.name, found.role) == (viewer_id, "wall-screen", Role.viewer)
    assert [(k.name, k.role) for k in db.list_api_keys()] == [
        ("wall-screen", Role.viewer),
        ("field-app", Role.operator),  # the default: may act, may not manage keys or promote
    ]
    assert db.find_api_key(operator + "x") is None
    db.revoke_api_key(viewer_id)
    assert db.find_api_key(viewer) is None


def test_keys_made_before_roles_become_admin(url: str) -> None:
    fresh = ResultsDB(url)
    fresh.upgrade("0003")
    with fresh.session() as s:
        s.execute(
            sa.text(
                "INSERT INTO api_keys (name, prefix, key_hash, created_at) VALUES ('old', 'ke_old', :h, :t)"
            ),
            {"h": "0" * 64, "t": datetime.now(UTC)},
        )
    fresh.upgrade("head")
    assert [(k.name, k.role) for k in fresh.list_api_keys()] == [("old", Role.admin)]


# --------------------------------------------------------------------------------------------------
# Batches: claim_many, complete_many, get_observations (the stream worker's one-transaction steps)
# --------------------------------------------------------------------------------------------------


def test_claim_many_claims_only_claimable_rows_and_counts_attempts(db: ResultsDB) -> None:
    queued, processing, done, rejected = (new_observation(db) for _ in range(4))
    db.set_status(processing, P)
    db.set_status(done, ObservationStatus.done)
    db.set_status(rejected, ObservationStatus.rejected, "bad")
    unknown = "f" * 32
    claimed = db.claim_many([queued, processing, done, rejected, unknown, queued], expect=[Q, P])
    assert set(claimed) == {queued, processing}
    assert claimed[queued].status is P and claimed[queued].attempts == 1
    assert claimed[processing].attempts == 2 and claimed[processing].claimed_at is not None
    assert db.claim_many([done, rejected, unknown]) == {}
    assert db.claim_many([]) == {}
    # Only from queued: the processing rows stay where they are.
    assert db.claim_many([queued, processing], expect=[Q]) == {}
    rows = db.get_observations([queued, done, unknown])
    assert set(rows) == {queued, done}
    assert rows[done].status is ObservationStatus.done and rows[queued].attempts == 1
    assert db.get_observations([]) == {}


def test_two_batch_claimers_exactly_one_wins_each_observation(db: ResultsDB) -> None:
    ids = [new_observation(db) for _ in range(20)]
    won: list[list[str]] = [[], []]

    def claim(k: int) -> None:
        for i in ids:
            won[k] += list(db.claim_many([i], expect=[Q]))

    threads = [threading.Thread(target=claim, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won[0] + won[1]) == sorted(ids)
    assert set(won[0]).isdisjoint(won[1])


def test_complete_many_stores_every_prediction_and_done_in_one_go(db: ResultsDB) -> None:
    ids = [new_observation(db) for _ in range(3)]
    db.claim_many(ids)
    already = ids[0]
    assert db.complete_observation(already, **prediction()) is True
    unknown = "e" * 32
    batch = [_completion(i, latency_ms=float(n)) for n, i in enumerate([*ids, unknown])]
    assert db.complete_many(batch) == {ids[0]: False, ids[1]: True, ids[2]: True}
    for i in ids:
        rec = db.get_observation(i)
        assert rec is not None and rec.status is ObservationStatus.done and rec.completed_at is not None
        assert len(db.predictions_for(i)) == 1
    assert db.predictions_for(ids[2])[0].latency_ms == 2.0
    assert db.count_predictions() == 3
    # A redelivered batch (and a duplicate inside one) records nothing new.
    assert db.complete_many([*batch, batch[1]]) == {i: False for i in ids}
    assert db.count_predictions() == 3
    assert db.complete_many([]) == {}
    assert db.complete_many([_completion(unknown)]) == {}


def test_complete_many_leaves_an_observation_finished_meanwhile_as_it_is(db: ResultsDB) -> None:
    """Two workers claimed one observation (a Kafka rebalance moved its partition while the first one
    held it) and the alias moved in between: the second completion, by another version, adds no second
    answer, keeps the first ``completed_at``, and completes the rest of its batch."""
    obs, other = new_observation(db), new_observation(db)
    db.claim_many([obs])
    db.claim_many([obs, other])  # the second worker's claim: processing is claimable
    assert db.complete_many([_completion(obs, model_version="1")]) == {obs: True}
    first = db.get_observation(obs)
    assert first is not None and first.completed_at is not None
    batch = [_completion(i, model_version="2") for i in (obs, other)]
    assert db.complete_many(batch) == {obs: False, other: True}
    assert [p.model_version for p in db.predictions_for(obs)] == ["1"]
    again = db.get_observation(obs)
    assert again is not None and again.completed_at == first.completed_at
    assert db.complete_many([_completion(obs, model_version="3")]) == {obs: False}  # all finished
    rejected = new_observation(db)
    db.set_status(rejected, ObservationStatus.rejected, "corrupt: cut short")
    assert db.complete_many([_completion(rejected)]) == {rejected: False}
    assert db.predictions_for(rejected) == []
    assert db.get_observation(rejected).status is ObservationStatus.rejected  # type: ignore[union-attr]


def test_complete_many_is_all_or_nothing(db: ResultsDB) -> None:
    good, bad = new_observation(db), new_observation(db)
    db.claim_many([good, bad])
    batch = [
        _completion(good),
        _completion(bad, result={"classes": {"salmon"}}),  # a set is not JSON
    ]
    with pytest.raises((StatementError, TypeError), match="not JSON serializable"):
        db.complete_many(batch)
    for i in (good, bad):
        rec = db.get_observation(i)
        assert rec is not None and (rec.status, rec.completed_at) == (P, None)
    assert db.count_predictions() == 0


def test_insert_ignoring_conflicts_skips_duplicates_and_counts_what_went_in(db: ResultsDB) -> None:
    obs_id = new_observation(db)
    now = datetime.now(UTC)

    def item(reason: str) -> dict[str, Any]:
        return {
            "observation_id": obs_id,
            "pipeline": "species-id",
            "reason": reason,
            "priority": 0.5,
            "details": {},
            "created_at": now,
            "resolved_at": None,
        }

    key = ["observation_id", "reason"]
    with db.session() as s:
        assert insert_ignoring_conflicts(s, ReviewItemRow, [item("audit")], key) == 1
    with db.session() as s:
        # One already stored, one new, and a duplicate within the batch: only the new one goes in.
        batch = [item("audit"), item("drift"), item("drift")]
        assert insert_ignoring_conflicts(s, ReviewItemRow, batch, key) == 1
        assert insert_ignoring_conflicts(s, ReviewItemRow, [], key) == 0
    with db.session() as s:
        rows = s.scalars(sa.select(ReviewItemRow.reason).order_by(ReviewItemRow.reason)).all()
    assert rows == ["audit", "drift"]


def _open_descriptors_on(path: Path) -> int:
    """This process's descriptors open on ``path`` or its -wal / -shm files."""
    names = {str(path), f"{path}-wal", f"{path}-shm"}
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if fd.is_symlink() and str(fd.readlink()) in names)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors through /proc")
def test_closing_a_shared_database_releases_its_files_and_the_next_open_is_fresh(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    db = open_results_db(settings)
    assert open_results_db(settings) is db  # one shared handle per URL
    path = Path(settings.database_url.removeprefix("sqlite:///"))
    assert _open_descriptors_on(path) >= 1  # the pooled connection holds the file open
    assert settings.database_url in opened_results_dbs()

    close_results_dbs([settings.database_url])
    assert settings.database_url not in opened_results_dbs()
    assert _open_descriptors_on(path) == 0
    fresh = open_results_db(settings)
    assert fresh is not db
    assert db.get_observation("no-such-id") is None  # the old handle still works: it reconnects
    close_results_dbs([settings.database_url, "sqlite:////never/opened.db"])  # unknown URLs: ignored
