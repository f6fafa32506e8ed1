"""Query plans and timings of the observations table's dashboard and retention reads, before and after
migration 0009 (its indexes), on SQLite and PostgreSQL.

    .venv/bin/python benchmarks/observation_indexes.py [--rows 50000] [--repeat 5] [--no-postgres]
        [--postgres-admin postgresql://postgres@127.0.0.1:5432/postgres] [--json out.json] [--plans]

Per backend: a fresh results database migrated to 0008, filled with ``--rows`` observations (70 % edge
parts of ``line-inspection`` over 2 days: 2 lines × 4 cameras, 2 % DEFECT, 0.5 % fail-safe; 30 %
``species-id`` API answers over 30 days with an image each, a prediction each, 2 % labelled, 3 % queued
for review, 7 % rejected or failed). Then the reads the product makes, through its own code:

* ``lines``: :func:`keeneye.monitoring.lines.lines_summary`, the ``GET /v1/lines`` document (60 min);
* ``lines_day``: the same over 24 h (the page's longest common window);
* ``overview``: :func:`keeneye.monitoring.summary.pipeline_summary` of both pipelines (the ``/`` cards);
* ``observations``: one page of ``GET /v1/observations`` (pipeline, newest first) and a failed-only page;
* ``retention``: a dry run of :func:`keeneye.store.retention.run_retention` (images after 7 days,
  events after 14 days) on ``species-id``: the same batched SELECTs a real run makes.

Each is timed ``--repeat`` times (the best and the median are reported); every SELECT it issued is
captured as sent and explained (``EXPLAIN QUERY PLAN`` / ``EXPLAIN``), once at 0008 and once after
``upgrade head`` (0009 builds its indexes on the filled table; that time is reported too). SQLite runs
no ANALYZE (keeneye never does); PostgreSQL is ANALYZEd after the fill, as autovacuum would.
Numbers from a shared machine vary; the load average is recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from keeneye.domain import ObservationStatus  # noqa: E402
from keeneye.monitoring.lines import LineQuery, lines_summary  # noqa: E402
from keeneye.monitoring.summary import pipeline_summary  # noqa: E402
from keeneye.settings import Settings  # noqa: E402
from keeneye.store import ObservationFilter, ResultsDB, insert_ignoring_conflicts, open_object_store  # noqa: E402
from keeneye.store.plans import captured_selects, query_plan  # noqa: E402
from keeneye.store.retention import RetentionPolicy, run_retention  # noqa: E402
from keeneye.store.schema import FeedbackRow, ObservationRow, PredictionRow, ReviewItemRow  # noqa: E402

BEFORE = "0008"
LINE, SPECIES = "line-inspection", "species-id"
CHUNK = 2000


# --------------------------------------------------------------------------------------------------
# the data
# --------------------------------------------------------------------------------------------------


def _spread(n: int, now: datetime, days: float) -> list[datetime]:
    """``n`` instants evenly over the ``days`` before ``now``, oldest first."""
    return [now - timedelta(days=days * (1 - i / n)) for i in range(n)]


def _edge_rows(n: int, now: datetime, rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    for i, at in enumerate(_spread(n, now, 2)):
        r = rng.random()
        code = 3 if r < 0.005 else 2 if r < 0.025 else 1
        meta = {
            "line": f"L{i % 2 + 1}",
            "camera": f"cam{i % 4 + 1}",
            "sku": f"SKU-{i % 3}",
            "result_code": code,
            "decision": {1: "ok", 2: "defect"}.get(code, "fail_safe"),
            "sequence": i,
            "triggered_at": at.timestamp() - 0.05,
            "latency_ms": 20 + rng.random() * 40,
            "sink": "acked",
            "sink_at": at.timestamp(),
            "plc": {"connected": True, "last_ack_at": at.timestamp(), "last_error": None},
        }
        rows.append(_observation(LINE, "edge", at, "done", f"line/{uuid.uuid4().hex}", meta))
    return rows


def _species_status(r: float) -> str:
    return "rejected" if r < 0.03 else "failed" if r < 0.07 else "queued" if r < 0.10 else "done"


def _species_rows(n: int, now: datetime, rng: random.Random) -> list[dict[str, Any]]:
    return [
        _observation(SPECIES, "api", at, _species_status(rng.random()), f"species/{uuid.uuid4().hex}", {})
        for at in _spread(n, now, 30)
    ]


def _observation(
    pipeline: str, source: str, at: datetime, status: str, key: str, meta: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "pipeline": pipeline,
        "status": status,
        "reason": None,
        "content_hash": uuid.uuid4().hex + uuid.uuid4().hex,
        "object_key": key,
        "content_type": "image/jpeg",
        "size_bytes": 150_000,
        "metadata_": meta,
        "source": source,
        "attempts": 1,
        "created_at": at,
        "updated_at": at,
        "claimed_at": None,
        "completed_at": at if status == "done" else None,
    }


def _prediction(obs: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    return {
        "observation_id": obs["id"],
        "pipeline": obs["pipeline"],
        "model_name": "species",
        "model_version": "1",
        "variant": "champion",
        "task": "classify",
        "result": {"predicted_class": f"class{rng.randrange(5)}"},
        "decision": None,
        "confidence": rng.random(),
        "latency_ms": 10 + rng.random() * 30,
        "timings": {},
        "created_at": obs["created_at"],
    }


def fill(db: ResultsDB, rows: int, now: datetime, seed: int = 18) -> dict[str, int]:
    """``rows`` observations (see the module docstring) with their predictions, labels and reviews."""
    rng = random.Random(seed)
    edge = _edge_rows(int(rows * 0.7), now, rng)
    species = _species_rows(rows - len(edge), now, rng)
    done = [o for o in species if o["status"] == "done"]
    predictions = [_prediction(o, rng) for o in done]
    labelled = rng.sample(done, k=len(done) // 50)
    feedback = [
        {
            "observation_id": o["id"],
            "label": {"class": "class1"},
            "source": "api",
            "author": "bench",
            "created_at": o["created_at"],
            "pipeline": SPECIES,
        }
        for o in labelled
    ]
    reviewed = rng.sample(done, k=len(done) * 3 // 100)
    reviews = [
        {
            "observation_id": o["id"],
            "pipeline": SPECIES,
            "reason": "low_confidence",
            "priority": rng.random(),
            "details": {},
            "created_at": o["created_at"],
            "resolved_at": None,
        }
        for o in reviewed
    ]
    for row_type, items, conflict in (
        (ObservationRow, edge + species, ["id"]),
        (PredictionRow, predictions, ["observation_id", "model_name", "model_version", "variant"]),
        (FeedbackRow, feedback, ["id"]),
        (ReviewItemRow, reviews, ["observation_id", "reason"]),
    ):
        for start in range(0, len(items), CHUNK):
            with db.session() as s:
                insert_ignoring_conflicts(s, row_type, items[start : start + CHUNK], conflict)
    return {
        "observations": len(edge) + len(species),
        "edge": len(edge),
        "species": len(species),
        "predictions": len(predictions),
        "feedback": len(feedback),
        "reviews": len(reviews),
    }


# --------------------------------------------------------------------------------------------------
# the reads
# --------------------------------------------------------------------------------------------------


def reads(db: ResultsDB, settings: Settings, now: datetime) -> dict[str, Callable[[], object]]:
    objects = open_object_store(settings)
    policy = RetentionPolicy(raw_images_days=7, flagged_images_days=7, events_days=14)
    return {
        "lines": lambda: lines_summary(db, LineQuery(LINE, minutes=60), deadline_ms=100, now=now),
        "lines_day": lambda: lines_summary(db, LineQuery(LINE, minutes=24 * 60), deadline_ms=100, now=now),
        "overview": lambda: [
            pipeline_summary(db, name, window_seconds=3600, buckets=30, now=now) for name in (LINE, SPECIES)
        ],
        "observations": lambda: (
            db.find_observations(ObservationFilter(pipeline=SPECIES), limit=50),
            db.find_observations(
                ObservationFilter(pipeline=SPECIES, status=ObservationStatus.failed), limit=50
            ),
        ),
        "retention": lambda: run_retention(db, objects, SPECIES, policy, now=now, dry_run=True),
    }


def measure(db: ResultsDB, settings: Settings, now: datetime, repeat: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, read in reads(db, settings, now).items():
        with captured_selects(db) as statements:
            read()  # warm: the plans below are those of this call's statements
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            read()
            times.append((time.perf_counter() - start) * 1000)
        unique: dict[str, Any] = {}
        for statement, parameters in statements:
            unique.setdefault(statement, parameters)
        plans = [
            {"sql": " ".join(st.split())[:400], "plan": query_plan(db, st, params)}
            for st, params in unique.items()
        ]
        out[name] = {
            "best_ms": round(min(times), 2),
            "median_ms": round(statistics.median(times), 2),
            "statements": len(statements),
            "plans": plans,
        }
    return out


def _analyze(db: ResultsDB) -> None:
    """PostgreSQL's statistics (autovacuum's job in production); SQLite is left without, as keeneye
    leaves it."""
    if db.backend == "postgresql":
        with db.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()


def run_backend(name: str, url: str, home: Path, rows: int, repeat: int) -> dict[str, Any]:
    settings = Settings(home=home, database_url=url)
    db = ResultsDB(url)
    try:
        db.upgrade(BEFORE)
        now = datetime.now(UTC)
        start = time.perf_counter()
        counts = fill(db, rows, now)
        fill_s = time.perf_counter() - start
        _analyze(db)
        before = measure(db, settings, now, repeat)
        start = time.perf_counter()
        db.upgrade("head")
        migrate_s = time.perf_counter() - start
        _analyze(db)  # the new indexes' statistics, as autovacuum would gather them
        after = measure(db, settings, now, repeat)
    finally:
        db.engine.dispose()
    return {
        "backend": name,
        "rows": counts,
        "fill_s": round(fill_s, 1),
        "migration_0009_s": round(migrate_s, 2),
        "before": before,
        "after": after,
    }


@contextlib.contextmanager
def postgres_database(admin: str) -> Iterator[str]:
    import psycopg

    name = f"keeneye_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _table(results: list[dict[str, Any]]) -> str:
    lines = ["| backend | read | before best / median ms | after best / median ms | speed-up (median) |"]
    lines.append("|---|---|---|---|---|")
    for r in results:
        for read, b in r["before"].items():
            a = r["after"][read]
            ratio = b["median_ms"] / a["median_ms"] if a["median_ms"] else float("inf")
            lines.append(
                f"| {r['backend']} | {read} | {b['best_ms']} / {b['median_ms']} | "
                f"{a['best_ms']} / {a['median_ms']} | {ratio:.1f}× |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--postgres-admin",
        default=os.environ.get(
            "KEENEYE_TEST_POSTGRES_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plans", action="store_true", help="print every plan, before and after")
    args = parser.parse_args()
    load = [round(x, 2) for x in os.getloadavg()]
    results = []
    with tempfile.TemporaryDirectory(prefix="keeneye-indexes-") as tmp:
        home = Path(tmp)
        results.append(run_backend("sqlite", f"sqlite:///{home / 'bench.db'}", home, args.rows, args.repeat))
        if not args.no_postgres:
            with postgres_database(args.postgres_admin) as url:
                results.append(run_backend("postgresql", url, home, args.rows, args.repeat))
    document = {
        "load_average": {"start": load, "end": [round(x, 2) for x in os.getloadavg()]},
        "results": results,
    }
    if args.plans:
        for r in results:
            for phase in ("before", "after"):
                for read, m in r[phase].items():
                    for p in m["plans"]:
                        print(f"--- {r['backend']} {phase} {read}: {p['sql'][:160]}")
                        print("\n".join("    " + line for line in p["plan"]))
    print(_table(results))
    for r in results:
        print(
            f"{r['backend']}: {r['rows']}, filled in {r['fill_s']} s, "
            f"migration 0009 {r['migration_0009_s']} s"
        )
    print(f"load average {document['load_average']}")
    if args.json:
        args.json.write_text(json.dumps(document, indent=2, default=str))


if __name__ == "__main__":
    main()
