"""The scheduler runs retention every ``retention.interval_seconds`` on its own clock (SQLite + files)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from keeneye.lifecycle.scheduler import Scheduler
from keeneye.metrics import Metrics
from keeneye.monitoring.alerts.source import RegistrySource
from keeneye.settings import RetentionSettings, Settings
from keeneye.store import ResultsDB, open_object_store, open_results_db
from keeneye.store.retention import in_ok_sample
from keeneye.store.schema import ObservationRow

NOW = datetime(2027, 6, 1, 12, 0, tzinfo=UTC)


def _old_frame(db: ResultsDB, settings: Settings, n: int) -> str:
    """An OK line-inspection frame finished 3 days before NOW, outside the OK sample; its object key."""
    obs_id = next(h for i in range(n * 1000, n * 1000 + 999) if not in_ok_sample(h := f"{i:032x}", 0.002))
    data = f"frame {n}".encode()
    digest = hashlib.sha256(data).hexdigest()
    key = f"observations/line-inspection/{digest[:2]}/{digest}.jpg"
    open_object_store(settings).put(key, data, content_type="image/jpeg")
    db.create_observation("line-inspection", digest, key, "image/jpeg", len(data), {}, "edge", id=obs_id)
    with db.session() as s:
        s.execute(
            update(ObservationRow)
            .where(ObservationRow.id == obs_id)
            .values(status="done", updated_at=NOW - timedelta(days=3))
        )
    return key


def test_retention_runs_when_due_and_not_before(settings: Settings) -> None:
    settings = settings.model_copy(
        update={"retention": RetentionSettings(interval_seconds=3600, batch_size=2)}
    )
    clock = [NOW.timestamp()]
    metrics = Metrics()
    scheduler = Scheduler(
        settings, source=RegistrySource(metrics.registry), metrics=metrics, clock=lambda: clock[0]
    )
    scheduler.setup()
    scheduler.engine = scheduler.quality = scheduler.retrain = scheduler.rollouts = None  # retention alone
    db = open_results_db(settings)
    objects = open_object_store(settings)
    first = [_old_frame(db, settings, n) for n in range(3)]

    scheduler.run_round()
    assert not any(objects.exists(k) for k in first)
    later = _old_frame(db, settings, 3)
    clock[0] += 3599
    scheduler.run_round()
    assert objects.exists(later)  # not due yet
    clock[0] += 1
    scheduler.run_round()
    assert not objects.exists(later)
    assert scheduler.last_error is None
    deleted = metrics.registry.get_sample_value(
        "keeneye_retention_deleted_total", {"pipeline": "line-inspection", "kind": "raw_images"}
    )
    assert deleted == 4


def test_a_run_out_of_time_goes_on_at_the_next_round(settings: Settings) -> None:
    budget = RetentionSettings(max_run_seconds=1e-9)  # over before the first batch
    settings = settings.model_copy(update={"retention": budget})
    clock = [NOW.timestamp()]
    scheduler = Scheduler(settings, metrics=Metrics(), clock=lambda: clock[0])
    scheduler.setup()
    scheduler.engine = scheduler.quality = scheduler.retrain = scheduler.rollouts = None
    key = _old_frame(open_results_db(settings), settings, 0)
    scheduler.run_round()
    assert open_object_store(settings).exists(key)
    assert scheduler._next_retention == clock[0]  # due again at once, not in an hour
