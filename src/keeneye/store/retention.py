"""Retention: deleting what a pipeline's ``retention:`` lets go, in bounded batches (docs/storage.md).

A policy (:class:`RetentionPolicy`, from the spec's ``retention:`` section; every field ``None`` =
keep forever) sorts each finished observation (``done``, ``rejected``, ``failed``; never one still in
work) of the pipeline into one kind, by its age — counted from ``updated_at``, when it finished:

* ``defect_images``: its image, when an answering prediction (champion or canary) said ``DEFECT`` or
  the observation's metadata records a ``DEFECT`` decision (the edge runner's fail-safe events),
  lives ``max(raw_images_days, flagged_images_days)``;
* ``ok_sample_images``: the image of any other observation whose id falls in the deterministic
  ``ok_sample_share`` sample (:func:`in_ok_sample`: a hash of the id, so every run, process and
  dry run agrees) lives ``max(raw_images_days, ok_sample_days)``;
* ``raw_images``: every other image lives ``raw_images_days``;
* ``events``: the observation row itself (with its predictions, deleted by the foreign key's
  cascade) lives ``events_days`` — and never longer than its image: a row whose image is still kept
  stays, so no stored image is ever left without the row that finds it.

Never touched: an observation with feedback (a label: the retraining dataset is built from every
labelled observation's image, :mod:`keeneye.lifecycle.retrain`) or a review item (open or resolved),
neither its image nor its row. They are counted as ``protected``.

Deleting an image removes the object and sets the row's ``object_key`` to NULL (the API then says the
image is not kept); a content-addressed object that another observation still points at is left in
place. What was derived from a deleted image (a mosaic's index maps, under :data:`DERIVED_PREFIX`)
goes with it. Each batch of at most ``batch_size`` rows is one transaction: the rows are locked (PostgreSQL
``FOR UPDATE``: a label for one of them waits for the batch), their keys cleared with the protection
checked again (a label committed since the read keeps its image), the objects deleted
(``ObjectStore.delete_many``), then the transaction commits. A crash after the objects went and before
the commit leaves rows pointing at missing objects, which the next run finds again and finishes:
reruns are safe and continue where a run stopped. With a ``deadline`` no batch starts after it (the
scheduler's time budget; the report says ``complete=False``). A dry run reads the same batches and
changes nothing.

:func:`estimate_storage` is the seed's storage sizing (docs/line-inspection.md#sizing).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import ColumnElement, and_, delete, exists, func, not_, or_, select, update
from sqlalchemy.orm import Session

from keeneye.domain import Decision, InvalidInput, JsonObject
from keeneye.metrics import Metrics
from keeneye.store.engine import Database, rowcount, utcnow
from keeneye.store.objects import ObjectStore
from keeneye.store.observations import ANSWERING_VARIANTS, ID_CHUNK, TERMINAL_STATUSES
from keeneye.store.schema import FeedbackRow, ObservationRow, PredictionRow, ReviewItemRow

log = logging.getLogger(__name__)

# Objects derived from one observation's image: ``<prefix>/<pipeline>/<observation id>/<name>`` (a
# crop-health mosaic's index maps, keeneye.pipelines.mosaic_jobs); deleted with the image.
DERIVED_PREFIX = "index-maps"
RAW_IMAGES = "raw_images"
DEFECT_IMAGES = "defect_images"
OK_SAMPLE_IMAGES = "ok_sample_images"
EVENTS = "events"
KINDS: tuple[str, ...] = (RAW_IMAGES, DEFECT_IMAGES, OK_SAMPLE_IMAGES, EVENTS)

DEFAULT_BATCH_SIZE = 500
_SAMPLE_SCALE = 2**64


class RetentionSpec(Protocol):
    """The shape of a pipeline spec's ``retention:`` section (``keeneye.pipelines.RetentionSection``)."""

    @property
    def events_days(self) -> int | None: ...
    @property
    def raw_images_days(self) -> int | None: ...
    @property
    def flagged_images_days(self) -> int | None: ...
    @property
    def ok_sample_share(self) -> float | None: ...
    @property
    def ok_sample_days(self) -> int | None: ...


def _longest(*days: int | None) -> int | None:
    """The longest of several lifetimes; ``None`` (forever) wins."""
    return None if any(d is None for d in days) else max(d for d in days if d is not None)


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each kind of data lives, in days; ``None`` = forever (the default for everything)."""

    raw_images_days: int | None = None
    flagged_images_days: int | None = None
    ok_sample_share: float = 0.0
    ok_sample_days: int | None = None
    events_days: int | None = None

    def __post_init__(self) -> None:
        for name in ("raw_images_days", "flagged_images_days", "ok_sample_days", "events_days"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidInput(
                    "bad_retention", f"retention.{name} is {value}", fix="use a whole number of days ≥ 1"
                )
        if not 0 <= self.ok_sample_share <= 1:
            raise InvalidInput(
                "bad_retention",
                f"retention.ok_sample_share is {self.ok_sample_share}",
                fix="use a share between 0 and 1, e.g. 0.002 for 0.2 %",
            )

    @classmethod
    def from_spec(cls, section: RetentionSpec) -> RetentionPolicy:
        return cls(
            raw_images_days=section.raw_images_days,
            flagged_images_days=section.flagged_images_days,
            ok_sample_share=section.ok_sample_share or 0.0,
            ok_sample_days=section.ok_sample_days,
            events_days=section.events_days,
        )

    def days(self, kind: str) -> int | None:
        """The lifetime of one kind of data (module docstring); ``None`` = kept forever."""
        if kind == RAW_IMAGES:
            return self.raw_images_days
        if kind == DEFECT_IMAGES:
            return _longest(self.raw_images_days, self.flagged_images_days)
        if kind == OK_SAMPLE_IMAGES:
            return _longest(self.raw_images_days, self.ok_sample_days) if self.ok_sample_share > 0 else None
        if kind == EVENTS:
            return self.events_days
        raise ValueError(f"unknown retention kind {kind!r}")

    @property
    def keeps_everything(self) -> bool:
        return self.raw_images_days is None and self.events_days is None

    def to_dict(self) -> JsonObject:
        return {
            "raw_images_days": self.raw_images_days,
            "flagged_images_days": self.flagged_images_days,
            "ok_sample_share": self.ok_sample_share,
            "ok_sample_days": self.ok_sample_days,
            "events_days": self.events_days,
        }


def in_ok_sample(observation_id: str, share: float) -> bool:
    """Whether an observation is in the kept OK sample: the first 8 bytes of the SHA-256 of its id,
    as a fraction of 2**64, below ``share``. Deterministic, so reruns and dry runs agree."""
    if share <= 0:
        return False
    digest = hashlib.sha256(observation_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < share * _SAMPLE_SCALE


@dataclass
class KindCount:
    """What one run did (or, dry, would do) to one kind of data."""

    deleted: int = 0  # images removed (observations keep their row) or event rows deleted
    bytes: int = 0  # object-store bytes freed (shared objects counted once, when really removed)
    protected: int = 0  # past their age but kept: referenced by feedback or a review item

    def to_dict(self) -> JsonObject:
        return {"deleted": self.deleted, "bytes": self.bytes, "protected": self.protected}


@dataclass
class RetentionReport:
    pipeline: str
    policy: RetentionPolicy
    now: datetime
    dry_run: bool
    kinds: dict[str, KindCount] = field(default_factory=lambda: {k: KindCount() for k in KINDS})
    batches: int = 0
    complete: bool = True  # False: the run's time ran out; the next run continues

    @property
    def deleted(self) -> int:
        return sum(c.deleted for c in self.kinds.values())

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.kinds.values())

    def to_dict(self) -> JsonObject:
        return {
            "pipeline": self.pipeline,
            "dry_run": self.dry_run,
            "now": self.now.isoformat(),
            "policy": self.policy.to_dict(),
            "batches": self.batches,
            "complete": self.complete,
            "deleted": self.deleted,
            "bytes": self.bytes,
            "kinds": {k: {**c.to_dict(), "days": self.policy.days(k)} for k, c in self.kinds.items()},
        }


# --------------------------------------------------------------------------------------------------
# The conditions
# --------------------------------------------------------------------------------------------------

_TERMINAL = sorted(s.value for s in TERMINAL_STATUSES)


def _flagged() -> ColumnElement[bool]:
    """A DEFECT answer the client (or the PLC) got, from a prediction or the edge event's metadata."""
    answered_defect = exists().where(
        PredictionRow.observation_id == ObservationRow.id,
        PredictionRow.variant.in_(ANSWERING_VARIANTS),
        PredictionRow.decision == Decision.defect.value,
    )
    # coalesce: a row without the field must read as not flagged, not NULL (NOT NULL is NULL, too).
    decided = func.coalesce(ObservationRow.metadata_["decision"].as_string(), "")
    return or_(answered_defect, decided == Decision.defect.value)


def _protected() -> ColumnElement[bool]:
    """Labelled (training data) or queued for review, now or before."""
    return or_(
        exists().where(FeedbackRow.observation_id == ObservationRow.id),
        exists().where(ReviewItemRow.observation_id == ObservationRow.id),
    )


def _finished(pipeline: str, before: datetime) -> list[ColumnElement[bool]]:
    return [
        ObservationRow.pipeline == pipeline,
        ObservationRow.status.in_(_TERMINAL),
        ObservationRow.updated_at < before,
    ]


def _after(cursor: tuple[datetime, str] | None) -> list[ColumnElement[bool]]:
    if cursor is None:
        return []
    at, last_id = cursor
    return [
        or_(
            ObservationRow.updated_at > at, and_(ObservationRow.updated_at == at, ObservationRow.id > last_id)
        )
    ]


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), ID_CHUNK):
        yield items[start : start + ID_CHUNK]


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    id: str
    key: str
    size: int
    kind: str


class _Run:
    def __init__(
        self,
        db: Database,
        objects: ObjectStore,
        report: RetentionReport,
        batch_size: int,
        metrics: Metrics | None,
        deadline: float | None,
        monotonic: Callable[[], float],
    ) -> None:
        self.db = db
        self.objects = objects
        self.report = report
        self.batch_size = batch_size
        self.metrics = metrics
        self.deadline = deadline
        self.monotonic = monotonic

    def _in_time(self) -> bool:
        """Whether another batch may start; once the deadline passed, the run is marked incomplete."""
        if self.report.complete and (self.deadline is None or self.monotonic() < self.deadline):
            return True
        self.report.complete = False
        return False

    @property
    def pipeline(self) -> str:
        return self.report.pipeline

    def _cutoff(self, kind: str) -> datetime | None:
        days = self.report.policy.days(kind)
        return None if days is None else self.report.now - timedelta(days=days)

    def _count(self, kind: str, amount: int, size: int) -> None:
        count = self.report.kinds[kind]
        count.deleted += amount
        count.bytes += size
        if self.metrics is not None and not self.report.dry_run and (amount or size):
            self.metrics.retention_deleted.labels(self.pipeline, kind).inc(amount)
            self.metrics.retention_deleted_bytes.labels(self.pipeline, kind).inc(size)

    # -- images -----------------------------------------------------------------------------------

    def images(self) -> None:
        defect_cut = self._cutoff(DEFECT_IMAGES)
        if defect_cut is not None:
            self._image_pass(DEFECT_IMAGES, defect_cut, _flagged())
        raw_cut = self._cutoff(RAW_IMAGES)
        if raw_cut is not None:
            self._image_pass(RAW_IMAGES, raw_cut, not_(_flagged()))

    def _image_pass(self, kind: str, cutoff: datetime, which: ColumnElement[bool]) -> None:
        conditions = [*_finished(self.pipeline, cutoff), ObservationRow.object_key.is_not(None), which]
        if not self._in_time():
            return
        self._count_protected(kind, conditions)
        cursor: tuple[datetime, str] | None = None
        while self._in_time():
            with self.db.session() as s:
                stmt = (
                    select(
                        ObservationRow.id,
                        ObservationRow.object_key,
                        ObservationRow.size_bytes,
                        ObservationRow.updated_at,
                    )
                    .where(*conditions, not_(_protected()), *_after(cursor))
                    .order_by(ObservationRow.updated_at, ObservationRow.id)
                    .limit(self.batch_size)
                )
                if not self.report.dry_run:
                    stmt = stmt.with_for_update(of=ObservationRow)
                rows = s.execute(stmt).all()
                if not rows:
                    return
                self.report.batches += 1
                cursor = (rows[-1].updated_at, rows[-1].id)
                doomed = [c for c in (self._classify(kind, *r) for r in rows) if c is not None]
                purged = self._purge_images(s, doomed) if doomed else []
            for purged_kind, size in purged:  # counted once committed
                self._count(purged_kind, 1, size)
            if len(rows) < self.batch_size:
                return

    def _classify(
        self, kind: str, obs_id: str, key: str | None, size: int, updated_at: datetime
    ) -> _Candidate | None:
        """The row's kind and whether its image goes now (None: kept, or no image after all)."""
        if key is None:
            return None
        if kind == RAW_IMAGES and in_ok_sample(obs_id, self.report.policy.ok_sample_share):
            sample_cut = self._cutoff(OK_SAMPLE_IMAGES)
            if sample_cut is None or updated_at >= sample_cut:
                return None  # in the OK sample, still young enough
            kind = OK_SAMPLE_IMAGES
        return _Candidate(obs_id, key, size, kind)

    def _purge_images(self, s: Session, doomed: list[_Candidate]) -> list[tuple[str, int]]:
        """Clear the rows' keys and delete the objects no other row uses; (kind, bytes freed) of each."""
        if self.report.dry_run:
            cleared = doomed
        else:
            ids = [c.id for c in doomed]
            done: set[str] = set()
            for chunk in _chunks(ids):
                # The protection again, under the row lock / write lock: a label that came after the
                # read keeps its image.
                stmt = (
                    update(ObservationRow)
                    .where(ObservationRow.id.in_(chunk), ObservationRow.object_key.is_not(None))
                    .where(not_(_protected()))
                    .values(object_key=None)
                    .returning(ObservationRow.id)
                )
                done.update(s.execute(stmt).scalars())
            cleared = [c for c in doomed if c.id in done]
        cleared_ids = {c.id for c in cleared}
        keys = sorted({c.key for c in cleared})
        still_used: set[str] = set()
        for chunk in _chunks(keys):
            holders = select(ObservationRow.id, ObservationRow.object_key).where(
                ObservationRow.object_key.in_(chunk)
            )
            still_used.update(str(key) for obs_id, key in s.execute(holders) if obs_id not in cleared_ids)
        gone = [k for k in keys if k not in still_used]
        if gone and not self.report.dry_run:
            self.objects.delete_many(gone)
        if cleared_ids and not self.report.dry_run:
            self._purge_derived(cleared_ids)
        freed = set(gone)
        purged = []
        for c in cleared:
            purged.append((c.kind, c.size if c.key in freed else 0))
            freed.discard(c.key)  # a shared object's bytes are counted once
        return purged

    def _purge_derived(self, ids: set[str]) -> None:
        """Delete the objects derived from these observations' images (one listing per batch)."""
        prefix = f"{DERIVED_PREFIX}/{self.pipeline}/"
        keys = [o.key for o in self.objects.list(prefix) if o.key[len(prefix) :].split("/", 1)[0] in ids]
        if keys:
            self.objects.delete_many(keys)

    def _count_protected(self, kind: str, conditions: list[ColumnElement[bool]]) -> None:
        stmt = select(func.count()).select_from(ObservationRow).where(*conditions, _protected())
        with self.db.session() as s:
            self.report.kinds[kind].protected += int(s.execute(stmt).scalar_one())

    # -- events -----------------------------------------------------------------------------------

    def events(self) -> None:
        cutoff = self._cutoff(EVENTS)
        if cutoff is None:
            return
        finished = _finished(self.pipeline, cutoff)
        if not self._in_time():
            return
        self._count_protected(EVENTS, finished)
        dry = self.report.dry_run
        # A real run has just cleared the keys of every image that went; a dry run cleared none, so it
        # asks of each row with an image whether that image would have gone (the same rules).
        conditions = finished if dry else [*finished, ObservationRow.object_key.is_(None)]
        cursor: tuple[datetime, str] | None = None
        while self._in_time():
            with self.db.session() as s:
                columns: list[Any] = [ObservationRow.id, ObservationRow.updated_at]
                if dry:
                    columns += [
                        ObservationRow.object_key,
                        ObservationRow.size_bytes,
                        _flagged().label("flagged"),
                    ]
                stmt = (
                    select(*columns)
                    .where(*conditions, not_(_protected()), *_after(cursor))
                    .order_by(ObservationRow.updated_at, ObservationRow.id)
                    .limit(self.batch_size)
                )
                if not dry:
                    stmt = stmt.with_for_update(of=ObservationRow)
                rows = s.execute(stmt).all()
                if not rows:
                    return
                self.report.batches += 1
                cursor = (rows[-1].updated_at, rows[-1].id)
                if dry:
                    deleted = sum(
                        1
                        for r in rows
                        if self._image_gone(r.id, r.object_key, r.size_bytes, r.updated_at, r.flagged)
                    )
                else:
                    deleted = 0
                    for chunk in _chunks([r.id for r in rows]):
                        stmt_delete = delete(ObservationRow).where(
                            ObservationRow.id.in_(chunk),
                            ObservationRow.object_key.is_(None),
                            not_(_protected()),
                        )
                        deleted += rowcount(s.execute(stmt_delete))
            self._count(EVENTS, deleted, 0)
            if len(rows) < self.batch_size:
                return

    def _image_gone(
        self, obs_id: str, key: str | None, size: int, updated_at: datetime, flagged: bool
    ) -> bool:
        """Dry run: whether this row has no image once the image passes have run."""
        if key is None:
            return True
        kind = DEFECT_IMAGES if flagged else RAW_IMAGES
        cutoff = self._cutoff(kind)
        if cutoff is None or updated_at >= cutoff:
            return False
        return flagged or self._classify(kind, obs_id, key, size, updated_at) is not None


def run_retention(
    db: Database,
    objects: ObjectStore,
    pipeline: str,
    policy: RetentionPolicy,
    *,
    now: datetime | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
    metrics: Metrics | None = None,
    deadline: float | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> RetentionReport:
    """Apply ``policy`` to ``pipeline``'s observations as of ``now`` (default: the clock); see the
    module docstring. Images first, then events (so an event whose image just went can go too).

    ``deadline`` (on ``monotonic``'s scale): no batch starts after it; the report is then
    ``complete=False`` and a later run continues (the scheduler's time budget)."""
    if batch_size < 1:
        raise InvalidInput("bad_batch_size", f"batch size {batch_size}", fix="use a batch size of 1 or more")
    report = RetentionReport(pipeline, policy, now or utcnow(), dry_run)
    run = _Run(db, objects, report, batch_size, metrics, deadline, monotonic)
    try:
        run.images()
        run.events()
    except Exception:
        if metrics is not None and not dry_run:
            metrics.retention_runs.labels(pipeline, "error").inc()
        raise
    if metrics is not None and not dry_run:
        metrics.retention_runs.labels(pipeline, "ok" if report.complete else "partial").inc()
        if report.complete:
            metrics.retention_last_run.labels(pipeline).set(report.now.timestamp())
    log.info(
        "retention %s",
        "dry run" if dry_run else "run",
        extra={
            "pipeline": pipeline,
            "deleted": report.deleted,
            "bytes": report.bytes,
            "batches": report.batches,
            "complete": report.complete,
        },
    )
    return report


def run_retention_all(
    db: Database,
    objects: ObjectStore,
    policies: Mapping[str, RetentionPolicy],
    *,
    now: datetime | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
    metrics: Metrics | None = None,
    deadline: float | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> list[RetentionReport]:
    """:func:`run_retention` for each pipeline whose policy deletes anything, in name order; all share
    one ``now`` and one ``deadline`` (a pipeline not reached reports ``complete=False``, nothing
    done). A pipeline that fails raises after the others ran (the first error)."""
    at = now or utcnow()
    reports: list[RetentionReport] = []
    first_error: Exception | None = None
    for name in sorted(policies):
        policy = policies[name]
        if policy.keeps_everything:
            continue
        try:
            reports.append(
                run_retention(
                    db,
                    objects,
                    name,
                    policy,
                    now=at,
                    batch_size=batch_size,
                    dry_run=dry_run,
                    metrics=metrics,
                    deadline=deadline,
                    monotonic=monotonic,
                )
            )
        except Exception as exc:
            log.exception("retention failed", extra={"pipeline": name})
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return reports


# --------------------------------------------------------------------------------------------------
# Sizing (the seed's arithmetic)
# --------------------------------------------------------------------------------------------------

KB = 1000  # decimal units throughout, as disks and the seed's "180 GB/day" are counted
SECONDS_PER_DAY = 86400


@dataclass(frozen=True)
class KindEstimate:
    kind: str
    per_day: float  # items a day
    bytes_per_day: float
    days: int | None  # retention; None = forever
    stored_bytes: float | None  # at steady state; None = grows forever

    def to_dict(self) -> JsonObject:
        return {
            "kind": self.kind,
            "per_day": round(self.per_day, 1),
            "bytes_per_day": round(self.bytes_per_day),
            "days": self.days,
            "stored_bytes": None if self.stored_bytes is None else round(self.stored_bytes),
        }


@dataclass(frozen=True)
class StorageEstimate:
    inspections_per_day: float
    image_bytes: float
    event_bytes: float
    defect_rate: float
    policy: RetentionPolicy
    kinds: list[KindEstimate]

    def kind(self, name: str) -> KindEstimate:
        return next(k for k in self.kinds if k.kind == name)

    @property
    def objects_bytes(self) -> float | None:
        """The object store at steady state (images); None when some kind is kept forever."""
        sizes = [k.stored_bytes for k in self.kinds if k.kind != EVENTS]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)

    @property
    def database_bytes(self) -> float | None:
        return self.kind(EVENTS).stored_bytes

    def to_dict(self) -> JsonObject:
        return {
            "inspections_per_day": round(self.inspections_per_day, 1),
            "image_bytes": self.image_bytes,
            "event_bytes": self.event_bytes,
            "defect_rate": self.defect_rate,
            "policy": self.policy.to_dict(),
            "kinds": [k.to_dict() for k in self.kinds],
            "objects_bytes": None if self.objects_bytes is None else round(self.objects_bytes),
            "database_bytes": None if self.database_bytes is None else round(self.database_bytes),
        }


def inspections_per_day(fps: float, cameras: int, hours_per_day: float = 24.0) -> float:
    """Frames a day: one inspection per frame, every camera, while the line runs."""
    if fps <= 0 or cameras < 1 or not 0 < hours_per_day <= 24:
        raise InvalidInput(
            "bad_estimate",
            f"fps {fps}, cameras {cameras}, hours a day {hours_per_day}",
            fix="use fps > 0, at least 1 camera and 0 < hours per day ≤ 24",
        )
    return fps * cameras * hours_per_day * 3600


def estimate_storage(
    per_day: float,
    *,
    image_kb: float,
    defect_rate: float,
    policy: RetentionPolicy,
    event_kb: float = 1.5,
) -> StorageEstimate:
    """The seed's sizing (seed 001, §3.2) for ``per_day`` inspections: every image for the raw days,
    the defective ones (``defect_rate``) for the flagged days, the OK sample (``ok_sample_share`` of
    the OK ones) for the sample days, one ``event_kb`` event per inspection for the event days. As in
    the seed, each kind is counted on its own (a defect image's first raw days are counted twice,
    < 1 % of the total with the line-inspection spec)."""
    if per_day <= 0 or image_kb <= 0 or event_kb < 0 or not 0 <= defect_rate <= 1:
        raise InvalidInput(
            "bad_estimate",
            f"inspections a day {per_day}, image {image_kb} KB, event {event_kb} KB, "
            f"defect rate {defect_rate}",
            fix="use positive sizes and a defect rate between 0 and 1 (0.015 for 1.5 %)",
        )
    image = image_kb * KB
    event = event_kb * KB

    def kind(name: str, count: float, size: float, days: int | None) -> KindEstimate:
        stored = None if days is None else count * size * days
        return KindEstimate(name, count, count * size, days, stored)

    kinds = [
        kind(RAW_IMAGES, per_day, image, policy.days(RAW_IMAGES)),
        kind(DEFECT_IMAGES, per_day * defect_rate, image, policy.days(DEFECT_IMAGES)),
        kind(
            OK_SAMPLE_IMAGES,
            per_day * (1 - defect_rate) * policy.ok_sample_share,
            image,
            policy.days(OK_SAMPLE_IMAGES),
        ),
        kind(EVENTS, per_day, event, policy.events_days),
    ]
    return StorageEstimate(per_day, image, event, defect_rate, policy, kinds)


__all__ = [
    "DEFECT_IMAGES",
    "EVENTS",
    "KINDS",
    "OK_SAMPLE_IMAGES",
    "RAW_IMAGES",
    "KindCount",
    "KindEstimate",
    "RetentionPolicy",
    "RetentionReport",
    "RetentionSpec",
    "StorageEstimate",
    "estimate_storage",
    "in_ok_sample",
    "inspections_per_day",
    "run_retention",
    "run_retention_all",
]
