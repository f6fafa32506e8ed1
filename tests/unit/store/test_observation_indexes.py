"""Migration 0009: the observations table's read indexes exist on both backends after an upgrade of a
filled table, and SQLite (which plans without statistics: keeneye never runs ANALYZE) uses them for
the line dashboard, the observations list and retention instead of scanning or sorting a pipeline.
Timings at 50 000 rows: benchmarks/observation_indexes.py."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from keeneye.domain import ObservationStatus
from keeneye.settings import Settings
from keeneye.store import ObservationFilter, ResultsDB, open_object_store
from keeneye.store.plans import captured_selects, query_plan
from keeneye.store.retention import RetentionPolicy, run_retention

NEW = {
    "ix_observations_pipeline_source_created_at": ["pipeline", "source", "created_at"],
    "ix_observations_pipeline_updated_at": ["pipeline", "updated_at"],
    "ix_observations_object_key": ["object_key"],
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"
    return str(request.getfixturevalue("postgres_url"))


def _indexes(db: ResultsDB) -> dict[str, list[str]]:
    return {
        str(i["name"]): [str(c) for c in i["column_names"]]
        for i in sa.inspect(db.engine).get_indexes("observations")
    }


def _edge_part(db: ResultsDB, n: int) -> str:
    meta = {"line": "L1", "camera": "cam1", "sku": "A", "result_code": 2, "sink": "acked", "sink_at": 1.0}
    return db.create_observation(
        "line-inspection", f"{n:064x}", f"line/{n}", "image/jpeg", 10, meta, "edge", ObservationStatus.done
    )


def test_0009_adds_the_read_indexes_to_a_filled_table(url: str) -> None:
    db = ResultsDB(url)
    try:
        db.upgrade("0008")
        before = _indexes(db)
        assert "ix_observations_pipeline" in before and not set(NEW) & set(before)
        ids = [_edge_part(db, n) for n in range(3)]
        db.upgrade("head")
        after = _indexes(db)
        assert {name: after.get(name) for name in NEW} == NEW
        assert "ix_observations_pipeline" not in after  # the prefix of ix_observations_pipeline_updated_at
        assert after["ix_observations_pipeline_status_updated_at"] == ["pipeline", "status", "updated_at"]
        assert set(db.get_observations(ids)) == set(ids)  # the rows are untouched
    finally:
        db.close()


def _plans(db: ResultsDB, read: Callable[[], object]) -> list[str]:
    with captured_selects(db) as sent:
        read()
    assert sent, "the read sent no SELECT"
    return ["\n".join(query_plan(db, statement, parameters)) for statement, parameters in sent]


def test_sqlite_plans_use_the_indexes(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    db = ResultsDB(f"sqlite:///{tmp_path / 'plans.db'}")
    try:
        db.upgrade()
        for n in range(5):
            _edge_part(db, n)
        since = datetime.now(UTC) - timedelta(hours=1)

        # the line dashboard: one pipeline's edge parts of a window, never the whole pipeline
        for plan in _plans(db, lambda: db.line_counts("line-inspection", since)) + _plans(
            db, lambda: db.recent_line_parts("line-inspection", "L1", "cam1", since, 100)
        ):
            assert (
                "ix_observations_pipeline_source_created_at (pipeline=? AND source=? AND created_at>?)"
                in plan
            )

        # the observations list: newest first along the index, no sort of the pipeline
        (page, *_) = _plans(db, lambda: db.find_observations(ObservationFilter(pipeline="line-inspection")))
        assert "ix_observations_pipeline_updated_at (pipeline=?)" in page
        assert "USE TEMP B-TREE FOR ORDER BY" not in page

        # retention: batches in updated_at order without a sort; "is the image still held" by key
        policy = RetentionPolicy(raw_images_days=1, flagged_images_days=1, events_days=2)
        objects = open_object_store(settings)
        later = datetime.now(UTC) + timedelta(days=3)
        plans = _plans(
            db, lambda: run_retention(db, objects, "line-inspection", policy, now=later, dry_run=True)
        )
        batches = [
            p for p in plans if "ix_observations_pipeline_updated_at (pipeline=? AND updated_at<?)" in p
        ]
        assert batches, plans
        assert all("USE TEMP B-TREE FOR ORDER BY" not in p for p in batches)
        held = [p for p in plans if "ix_observations_object_key (object_key=?)" in p]
        assert held, plans
        assert not any(p.strip() == "SCAN observations" for p in plans)
    finally:
        db.close()
