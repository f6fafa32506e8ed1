"""The outbox reconciler: re-publish observations stuck in ``queued`` / ``processing``.

The observations table is the outbox. An observation is stuck when nobody touched it for
``settings.stream.stale_after_seconds``: accepted while the broker was down, the API died between
commit and publish, or its worker died and the bus did not redeliver (Kafka redelivers only on a
rebalance). ``claim_stale`` hands each stale row to exactly one reconciler at a time (several may run),
and the row is published again. Workers are idempotent on the observation id, so this gives
at-least-once delivery and exactly-once effect.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from keeneye.domain import NotFound, ObservationStatus
from keeneye.settings import Settings
from keeneye.store import ObjectStore, ObservationRecord, ResultsDB, open_object_store, open_results_db
from keeneye.stream.bus import Bus, open_bus
from keeneye.stream.messages import ObservationMessage, fits_inline, publish_observation

log = logging.getLogger(__name__)

STALE_STATUSES = (ObservationStatus.queued, ObservationStatus.processing)
# Headers, key and metadata of a typical message: below this margin the bytes are read back inline.
_HEADER_MARGIN = 4096


@dataclass(frozen=True)
class ReconcileReport:
    republished: int
    failed: int  # the object is gone: it can never be processed

    def __bool__(self) -> bool:
        return bool(self.republished or self.failed)


class Reconciler:
    """Re-publishes one pipeline's stale observations (``pipeline=None``: every pipeline)."""

    def __init__(
        self,
        settings: Settings,
        pipeline: str | None,
        *,
        db: ResultsDB | None = None,
        objects: ObjectStore | None = None,
        bus: Bus | None = None,
        stale_after_seconds: float | None = None,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.db = db or open_results_db(settings)
        self.objects = objects or open_object_store(settings)
        self._own_bus = bus is None
        self.bus = bus or open_bus(settings)
        self.stale_after = stale_after_seconds or settings.stream.stale_after_seconds

    def run_once(self, *, limit: int = 500) -> ReconcileReport:
        """One pass: claim up to ``limit`` stale rows and publish each again (flushed)."""
        ids = self.db.claim_stale(self.pipeline, self.stale_after, STALE_STATUSES, limit=limit)
        republished = failed = 0
        for obs_id in ids:
            record = self.db.get_observation(obs_id)
            if record is None or record.status not in STALE_STATUSES:
                continue  # finished between the claim and now
            try:
                msg = self._message(record)
            except NotFound as exc:
                reason = f"missing_object: {exc.message}"
                if self.db.set_status(obs_id, ObservationStatus.failed, reason, expect=STALE_STATUSES):
                    failed += 1
                    log.error(
                        "reconciler: object missing; observation failed", extra={"observation_id": obs_id}
                    )
                continue
            publish_observation(self.bus, msg)
            republished += 1
        if republished:
            self.bus.flush()
            log.info(
                "reconciler: re-published stale observations",
                extra={"pipeline": self.pipeline, "count": republished},
            )
        return ReconcileReport(republished, failed)

    def _message(self, record: ObservationRecord) -> ObservationMessage:
        if record.object_key is None:
            raise NotFound(f"observation {record.id} has no object key")
        base = ObservationMessage(
            observation_id=record.id,
            pipeline=record.pipeline,
            content_hash=record.content_hash,
            content_type=record.content_type,
            metadata=dict(record.metadata),
            data=None,
            object_key=record.object_key,
            source=record.source,
        )
        limit = self.settings.bus.max_message_bytes
        if record.size_bytes + _HEADER_MARGIN > limit:
            if not self.objects.exists(record.object_key):
                raise NotFound(f"object {record.object_key!r} is not in the object store")
            return base
        data = self.objects.get(record.object_key)  # NotFound when it is gone
        inline = dataclasses.replace(base, data=data)
        return inline if fits_inline(inline, limit) else base

    def close(self) -> None:
        if self._own_bus:
            self.bus.close()
