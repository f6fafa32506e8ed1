"""Retention (``keeneye.store.retention``) with an injected clock over the four kinds of data — raw
images, defect images, the OK sample, events — on SQLite and PostgreSQL, a local folder and S3 (moto);
protection by labels and review items, batch boundaries, a crashed run finished by a rerun, dry runs,
metrics, and the seed's storage sizing."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select, update

from keeneye.domain import Decision, ObservationStatus, Variant
from keeneye.metrics import Metrics
from keeneye.pipelines import PipelineCatalog
from keeneye.settings import S3Settings, Settings
from keeneye.store import NewReviewItem, ObjectStore, ResultsDB, open_object_store
from keeneye.store.retention import (
    DEFECT_IMAGES,
    EVENTS,
    OK_SAMPLE_IMAGES,
    RAW_IMAGES,
    RetentionPolicy,
    RetentionReport,
    estimate_storage,
    in_ok_sample,
    inspections_per_day,
    run_retention,
)
from keeneye.store.schema import ObservationRow, PredictionRow

NOW = datetime(2027, 6, 1, 12, 0, tzinfo=UTC)
PIPELINE = "line-inspection"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultsDB]:
    url = (
        f"sqlite:///{tmp_path / 'results.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    results = ResultsDB(url)
    results.upgrade()
    yield results
    results.close()


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.integration)])
def objects(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "file":
        return open_object_store(
            Settings(home=tmp_path / "home", objects_url=(tmp_path / "objects").as_uri())
        )
    server = request.getfixturevalue("s3_server")
    keys = SecretStr("test")  # moto accepts any credentials
    settings = Settings(
        home=tmp_path / "home",
        objects_url=f"s3://keeneye-retention-{uuid4().hex[:8]}/run",
        s3=S3Settings(endpoint_url=server.endpoint_url, access_key_id=keys, secret_access_key=keys),
    )
    return open_object_store(settings)


@pytest.fixture(scope="module")
def policy() -> RetentionPolicy:
    """The built-in line-inspection spec's retention: raw 2 d, defects 365 d, 0.2 % OK 30 d, events 365 d."""
    spec = PipelineCatalog(Settings(home=Path("/nonexistent"))).get(PIPELINE)
    return RetentionPolicy.from_spec(spec.retention)


def sample_ids(share: float, inside: bool, n: int) -> list[str]:
    """Observation ids that are (or are not) in the OK sample."""
    found: list[str] = []
    i = 0
    while len(found) < n:
        candidate = hashlib.md5(str(i).encode()).hexdigest()
        if in_ok_sample(candidate, share) == inside:
            found.append(candidate)
        i += 1
    return found


@dataclass
class Seeder:
    db: ResultsDB
    objects: ObjectStore
    pipeline: str = PIPELINE

    def add(
        self,
        age_days: float,
        *,
        decision: Decision | None = Decision.ok,
        status: ObservationStatus = ObservationStatus.done,
        metadata: dict[str, Any] | None = None,
        data: bytes | None = None,
        obs_id: str | None = None,
        image: bool = True,
    ) -> str:
        obs_id = obs_id or uuid4().hex
        data = data if data is not None else f"frame {obs_id}".encode() * 10
        digest = hashlib.sha256(data).hexdigest()
        key = f"observations/{self.pipeline}/{digest[:2]}/{digest}.jpg" if image else None
        if key is not None:
            self.objects.put(key, data, content_type="image/jpeg")
        self.db.create_observation(
            self.pipeline,
            digest,
            key,
            "image/jpeg",
            len(data),
            metadata or {},
            "edge",
            status=status,
            id=obs_id,
        )
        if decision is not None and status is ObservationStatus.done:
            self.db.save_prediction(
                obs_id, self.pipeline, self.pipeline, "1", Variant.champion, "segment", {}, decision, 0.9, 5.0
            )
        with self.db.session() as s:
            s.execute(
                update(ObservationRow)
                .where(ObservationRow.id == obs_id)
                .values(updated_at=NOW - timedelta(days=age_days))
            )
        return obs_id

    def key(self, obs_id: str) -> str | None:
        obs = self.db.get_observation(obs_id)
        assert obs is not None
        return obs.object_key

    def size(self, obs_id: str) -> int:
        obs = self.db.get_observation(obs_id)
        assert obs is not None
        return obs.size_bytes


def counts(report: RetentionReport) -> dict[str, tuple[int, int, int]]:
    return {k: (c.deleted, c.bytes, c.protected) for k, c in report.kinds.items()}


def test_the_four_kinds_age_out_as_the_spec_says_and_references_protect(
    db: ResultsDB, objects: ObjectStore, policy: RetentionPolicy
) -> None:
    assert (policy.raw_images_days, policy.flagged_images_days, policy.events_days) == (2, 365, 365)
    assert (policy.ok_sample_share, policy.ok_sample_days) == (0.002, 30)
    seed = Seeder(db, objects)
    in_sample = sample_ids(policy.ok_sample_share, True, 2)
    outside = sample_ids(policy.ok_sample_share, False, 7)
    ids = {
        "raw_young": seed.add(1.5, obs_id=outside[5]),
        "raw_old": seed.add(3, obs_id=outside[0]),
        "sample_young": seed.add(20, obs_id=in_sample[0]),
        "sample_old": seed.add(31, obs_id=in_sample[1]),
        "defect_kept": seed.add(300, decision=Decision.defect),
        "defect_gone": seed.add(366, decision=Decision.defect),
        "failsafe_kept": seed.add(
            200,
            status=ObservationStatus.rejected,
            metadata={"decision": "DEFECT", "reason": "deadline_missed"},
        ),
        "event_gone": seed.add(400, obs_id=outside[1]),
        "labelled": seed.add(400, obs_id=outside[2]),
        "reviewed": seed.add(10, obs_id=outside[3]),
        "in_work": seed.add(10, status=ObservationStatus.queued, decision=None),
    }
    shared = b"the same frame twice" * 10
    ids["dup_old"] = seed.add(5, data=shared, obs_id=outside[4])
    ids["dup_young"] = seed.add(1, data=shared, obs_id=outside[6])
    db.add_feedback(ids["labelled"], {"decision": "OK"}, "review")
    db.queue_reviews([NewReviewItem(ids["reviewed"], PIPELINE, "audit", 1.0, {})])
    other = Seeder(db, objects, pipeline="species-id")
    untouched = other.add(900, decision=None)
    keys = {name: seed.key(obs_id) for name, obs_id in ids.items()}
    sizes = {name: seed.size(obs_id) for name, obs_id in ids.items()}

    report = run_retention(db, objects, PIPELINE, policy, now=NOW, batch_size=4)

    assert counts(report) == {
        RAW_IMAGES: (3, sizes["raw_old"] + sizes["event_gone"], 2),  # dup_old's object is still used
        OK_SAMPLE_IMAGES: (1, sizes["sample_old"], 0),
        DEFECT_IMAGES: (1, sizes["defect_gone"], 0),
        EVENTS: (2, 0, 1),  # defect_gone and event_gone; labelled is protected
    }
    gone_images = {"raw_old", "sample_old", "defect_gone", "event_gone"}
    for name, key in keys.items():
        assert key is not None
        assert objects.exists(key) == (name not in gone_images), name
    rows = {name: db.get_observation(obs_id) for name, obs_id in ids.items()}
    assert {name for name, row in rows.items() if row is None} == {"defect_gone", "event_gone"}
    cleared = {name for name, row in rows.items() if row is not None and row.object_key is None}
    assert cleared == {"raw_old", "sample_old", "dup_old"}
    with db.session() as s:
        orphans = s.execute(
            select(func.count())
            .select_from(PredictionRow)
            .where(PredictionRow.observation_id == ids["defect_gone"])
        ).scalar_one()
    assert orphans == 0  # the event's predictions went with it
    assert other.key(untouched) is not None and db.get_observation(ids["in_work"]) is not None

    again = run_retention(db, objects, PIPELINE, policy, now=NOW, batch_size=4)
    assert (again.deleted, again.bytes) == (0, 0)  # nothing left to do: reruns are harmless

    later = run_retention(db, objects, PIPELINE, policy, now=NOW + timedelta(days=1.5), batch_size=4)
    assert later.kinds[RAW_IMAGES].deleted == 2  # raw_young and dup_young, now 3 and 2.5 days old
    assert not objects.exists(str(keys["dup_young"]))  # the shared object goes with its last user


@pytest.mark.parametrize("objects", ["file"], indirect=True)
def test_a_dry_run_counts_the_same_and_changes_nothing(
    db: ResultsDB, objects: ObjectStore, policy: RetentionPolicy
) -> None:
    seed = Seeder(db, objects)
    outside = sample_ids(policy.ok_sample_share, False, 3)
    made = [
        seed.add(3, obs_id=outside[0]),
        seed.add(400, obs_id=outside[1]),
        seed.add(370, decision=Decision.defect),
    ]
    made.append(seed.add(40, obs_id=sample_ids(policy.ok_sample_share, True, 1)[0]))
    made.append(seed.add(1))
    before = {obs_id: seed.key(obs_id) for obs_id in made}

    dry = run_retention(db, objects, PIPELINE, policy, now=NOW, batch_size=2, dry_run=True)

    assert {obs_id: seed.key(obs_id) for obs_id in made} == before
    assert all(objects.exists(str(key)) for key in before.values())
    real = run_retention(db, objects, PIPELINE, policy, now=NOW, batch_size=2)
    assert counts(dry) == counts(real)
    assert (real.kinds[RAW_IMAGES].deleted, real.kinds[EVENTS].deleted) == (2, 2)


class FailingSecondDelete:
    """An object store whose second ``delete_many`` deletes its keys, then fails (a crash between the
    object store and the commit)."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def delete_many(self, keys: Sequence[str]) -> None:
        self.calls += 1
        self.inner.delete_many(keys)
        if self.calls == 2:
            raise OSError("the process died here")


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
@pytest.mark.parametrize("objects", ["file"], indirect=True)
def test_batches_are_bounded_and_a_rerun_finishes_a_crashed_run(
    db: ResultsDB, objects: ObjectStore, policy: RetentionPolicy
) -> None:
    seed = Seeder(db, objects)
    made = [
        seed.add(4 - i / 10, obs_id=o) for i, o in enumerate(sample_ids(policy.ok_sample_share, False, 7))
    ]
    keys = [seed.key(o) for o in made]
    failing = FailingSecondDelete(objects)
    with pytest.raises(OSError, match="died"):
        run_retention(db, failing, PIPELINE, policy, now=NOW, batch_size=3)  # type: ignore[arg-type]
    cleared = [o for o in made if seed.key(o) is None]
    assert cleared == made[:3]  # the first batch committed; the second rolled back
    assert sum(not objects.exists(str(k)) for k in keys) == 6  # …after its objects were deleted

    metrics = Metrics()
    rerun = run_retention(db, objects, PIPELINE, policy, now=NOW, batch_size=3, metrics=metrics)

    assert rerun.kinds[RAW_IMAGES].deleted == 4 and rerun.batches == 2  # 3 + 1 rows, the rest was done
    assert all(seed.key(o) is None for o in made)
    assert not any(objects.exists(str(k)) for k in keys)
    sample = metrics.registry.get_sample_value
    assert sample("keeneye_retention_deleted_total", {"pipeline": PIPELINE, "kind": RAW_IMAGES}) == 4
    assert sample("keeneye_retention_runs_total", {"pipeline": PIPELINE, "outcome": "ok"}) == 1
    assert sample("keeneye_retention_last_run_timestamp_seconds", {"pipeline": PIPELINE}) == NOW.timestamp()


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
@pytest.mark.parametrize("objects", ["file"], indirect=True)
def test_a_run_out_of_time_stops_between_batches_and_the_next_goes_on(
    db: ResultsDB, objects: ObjectStore, policy: RetentionPolicy
) -> None:
    seed = Seeder(db, objects)
    made = [
        seed.add(4 - i / 10, obs_id=o) for i, o in enumerate(sample_ids(policy.ok_sample_share, False, 7))
    ]
    ticks = iter(range(100))  # one tick per "may another batch start?"
    metrics = Metrics()
    # ticks 0, 1: the defect pass (nothing to do); 2: the raw pass starts; 3: its first batch; 4: stop
    first = run_retention(
        db,
        objects,
        PIPELINE,
        policy,
        now=NOW,
        batch_size=3,
        metrics=metrics,
        deadline=4,
        monotonic=lambda: next(ticks),
    )
    assert (first.complete, first.kinds[RAW_IMAGES].deleted, first.kinds[EVENTS].deleted) == (False, 3, 0)
    assert [seed.key(o) is None for o in made] == [True] * 3 + [False] * 4
    second = run_retention(db, objects, PIPELINE, policy, now=NOW, batch_size=3, metrics=metrics)
    assert (second.complete, second.kinds[RAW_IMAGES].deleted) == (True, 4)
    sample = metrics.registry.get_sample_value
    assert sample("keeneye_retention_runs_total", {"pipeline": PIPELINE, "outcome": "partial"}) == 1
    assert sample("keeneye_retention_runs_total", {"pipeline": PIPELINE, "outcome": "ok"}) == 1


def test_a_pipeline_without_retention_keeps_everything(tmp_path: Path) -> None:
    policy = RetentionPolicy.from_spec(PipelineCatalog(Settings(home=tmp_path)).get("species-id").retention)
    assert policy.keeps_everything
    assert [policy.days(k) for k in (RAW_IMAGES, DEFECT_IMAGES, OK_SAMPLE_IMAGES, EVENTS)] == [None] * 4


def test_the_ok_sample_is_deterministic_and_near_its_share() -> None:
    ids = [uuid4().hex for _ in range(20000)]
    picked = [i for i in ids if in_ok_sample(i, 0.05)]
    assert picked == [i for i in ids if in_ok_sample(i, 0.05)]
    assert 0.04 < len(picked) / len(ids) < 0.06
    assert not any(in_ok_sample(i, 0.0) for i in ids[:100]) and all(in_ok_sample(i, 1.0) for i in ids[:100])


def test_the_estimate_reproduces_the_seed(policy: RetentionPolicy) -> None:
    """Seed 001 §3.2: 1,124,316 inspections a day → ≈180 GB/day raw (360 GB for 2 days), ≈2.6 GB/day of
    defects (≈950 GB a year), ≈11 GB of OK sample, ≈1.3 TB net; events ≈1.7 GB/day, ≈620 GB a year.
    Decimal units; the seed's 2.6 and 950 divide by 1024 once (2,698,400 KB / 1024 / 1000)."""
    est = estimate_storage(1_124_316, image_kb=160, defect_rate=0.015, policy=policy)
    gb = 1e9
    raw, defects, sample, events = (
        est.kind(k) for k in (RAW_IMAGES, DEFECT_IMAGES, OK_SAMPLE_IMAGES, EVENTS)
    )
    assert raw.bytes_per_day / gb == pytest.approx(179.89, abs=0.01)
    assert raw.stored_bytes is not None and raw.stored_bytes / gb == pytest.approx(359.78, abs=0.01)
    assert round(defects.per_day) == 16865
    assert defects.bytes_per_day / gb == pytest.approx(2.698, abs=0.001)
    assert defects.stored_bytes is not None and defects.stored_bytes / gb == pytest.approx(984.9, abs=0.1)
    assert round(sample.per_day) == 2215  # 0.2 % of the OK parts (the seed took 0.2 % of all: 2,249)
    assert sample.stored_bytes is not None and sample.stored_bytes / gb == pytest.approx(10.63, abs=0.01)
    assert est.objects_bytes is not None and est.objects_bytes / 1e12 == pytest.approx(1.355, abs=0.001)
    assert events.bytes_per_day / gb == pytest.approx(1.686, abs=0.001)
    assert est.database_bytes is not None and est.database_bytes / gb == pytest.approx(615.6, abs=0.1)
    # 60 fps on one camera all day is 4.6 times the seed's day: 5,184,000 frames, 829 GB of raw images.
    per_camera = inspections_per_day(60, 1)
    assert per_camera == 5_184_000
    one_camera = estimate_storage(per_camera, image_kb=160, defect_rate=0.015, policy=policy)
    assert one_camera.kind(RAW_IMAGES).bytes_per_day / gb == pytest.approx(829.44)
    assert estimate_storage(1, image_kb=1, defect_rate=0, policy=RetentionPolicy()).objects_bytes is None
