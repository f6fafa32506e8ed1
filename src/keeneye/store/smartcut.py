"""smartcut requests: the rows behind ``/v1/smartcut/requests`` (docs/smartcut.md).

The backend (:mod:`keeneye.serving.smartcut`) creates a row when a request is accepted, advances its
progress while it samples and the plugin deletes chunks, and closes it once with the plugin's
segments (``done``) or a reason (``failed``). Closing is conditional on the row still being open, so
a late answer after a timeout never overwrites the reason, and a second answer is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update

from keeneye.domain import JsonObject, NotFound
from keeneye.store.engine import Database, rowcount, utcnow
from keeneye.store.schema import SmartcutRequestRow

SMARTCUT_OPEN = ("sampling", "processing")
SMARTCUT_STATES = (*SMARTCUT_OPEN, "done", "failed")


@dataclass(frozen=True)
class SmartcutRequestRecord:
    uid: str
    user_id: str
    plugin: str
    video_name: str
    sensitivity: float
    status: str
    reason: str | None
    frames_sampled: int
    chunks_sent: int
    chunks_processed: int
    segments: JsonObject | None
    edits: JsonObject | None
    created_at: datetime
    updated_at: datetime
    options: JsonObject | None = None

    @classmethod
    def of(cls, row: SmartcutRequestRow) -> SmartcutRequestRecord:
        return cls(
            uid=row.uid,
            user_id=row.user_id,
            plugin=row.plugin,
            video_name=row.video_name,
            sensitivity=float(row.sensitivity),
            status=row.status,
            reason=row.reason,
            frames_sampled=int(row.frames_sampled),
            chunks_sent=int(row.chunks_sent),
            chunks_processed=int(row.chunks_processed),
            segments=None if row.segments is None else dict(row.segments),
            edits=None if row.edits is None else dict(row.edits),
            created_at=row.created_at,
            updated_at=row.updated_at,
            options=None if row.options is None else dict(row.options),
        )


class SmartcutRepository(Database):
    """smartcut request reads and writes of :class:`~keeneye.store.ResultsDB`."""

    def create_smartcut_request(
        self,
        uid: str,
        *,
        user_id: str,
        plugin: str,
        video_name: str,
        sensitivity: float,
        options: JsonObject | None = None,
    ) -> SmartcutRequestRecord:
        now = utcnow()
        row = SmartcutRequestRow(
            uid=uid,
            user_id=user_id,
            plugin=plugin,
            video_name=video_name,
            sensitivity=sensitivity,
            status="sampling",
            reason=None,
            frames_sampled=0,
            chunks_sent=0,
            chunks_processed=0,
            segments=None,
            edits=None,
            created_at=now,
            updated_at=now,
            options=options or None,
        )
        with self.session() as s:
            s.add(row)
            s.flush()
            return SmartcutRequestRecord.of(row)

    def smartcut_request(self, uid: str) -> SmartcutRequestRecord:
        with self.session() as s:
            row = s.get(SmartcutRequestRow, uid)
            if row is None:
                raise NotFound(
                    f"no smartcut request {uid!r}", fix="use a request_uid from POST /v1/smartcut/requests"
                )
            return SmartcutRequestRecord.of(row)

    def smartcut_requests(self, user_id: str | None, limit: int = 100) -> list[SmartcutRequestRecord]:
        """A user's requests (``None``: every user's), newest first."""
        stmt = select(SmartcutRequestRow)
        if user_id is not None:
            stmt = stmt.where(SmartcutRequestRow.user_id == user_id)
        stmt = stmt.order_by(SmartcutRequestRow.created_at.desc(), SmartcutRequestRow.uid).limit(limit)
        with self.session() as s:
            return [SmartcutRequestRecord.of(r) for r in s.scalars(stmt)]

    def open_smartcut_requests(self) -> list[SmartcutRequestRecord]:
        """Requests still sampling or processing (what the in-flight limits and timeouts look at)."""
        with self.session() as s:
            rows = s.scalars(
                select(SmartcutRequestRow)
                .where(SmartcutRequestRow.status.in_(SMARTCUT_OPEN))
                .order_by(SmartcutRequestRow.created_at)
            )
            return [SmartcutRequestRecord.of(r) for r in rows]

    def count_open_smartcut_requests(self) -> dict[str, int]:
        """user_id → requests in flight."""
        with self.session() as s:
            rows = s.execute(
                select(SmartcutRequestRow.user_id, func.count())
                .where(SmartcutRequestRow.status.in_(SMARTCUT_OPEN))
                .group_by(SmartcutRequestRow.user_id)
            )
            return {str(user): int(n) for user, n in rows}

    def update_smartcut_progress(
        self,
        uid: str,
        *,
        status: str | None = None,
        frames_sampled: int | None = None,
        chunks_sent: int | None = None,
        chunks_processed: int | None = None,
    ) -> bool:
        """Advance an open request; False when it is closed already (or unknown)."""
        values: dict[str, object] = {"updated_at": utcnow()}
        if status is not None:
            if status not in SMARTCUT_OPEN:
                raise ValueError(f"progress status must be one of {SMARTCUT_OPEN}, not {status!r}")
            values["status"] = status
        for name, value in (
            ("frames_sampled", frames_sampled),
            ("chunks_sent", chunks_sent),
            ("chunks_processed", chunks_processed),
        ):
            if value is not None:
                values[name] = value
        return self._update_open_smartcut_request(uid, values)

    def finish_smartcut_request(
        self,
        uid: str,
        *,
        segments: JsonObject | None = None,
        reason: str | None = None,
        chunks_processed: int | None = None,
    ) -> bool:
        """Close an open request: ``done`` with segments, or ``failed`` with a reason. False when it
        was closed already (a late or repeated answer) or is unknown."""
        if (segments is None) == (reason is None):
            raise ValueError("give segments (done) or a reason (failed), not both or neither")
        values: dict[str, object] = {
            "status": "done" if reason is None else "failed",
            "segments": segments,
            "reason": reason,
            "updated_at": utcnow(),
        }
        if chunks_processed is not None:
            values["chunks_processed"] = chunks_processed
        return self._update_open_smartcut_request(uid, values)

    def _update_open_smartcut_request(self, uid: str, values: dict[str, object]) -> bool:
        """One conditional UPDATE: only a request still open changes (closing happens once)."""
        with self.session() as s:
            result = s.execute(
                update(SmartcutRequestRow)
                .where(SmartcutRequestRow.uid == uid, SmartcutRequestRow.status.in_(SMARTCUT_OPEN))
                .values(**values)
            )
            return rowcount(result) == 1

    def set_smartcut_edits(self, uid: str, edits: JsonObject) -> SmartcutRequestRecord:
        """The user's edited segments (kept beside the plugin's)."""
        with self.session() as s:
            row = s.get(SmartcutRequestRow, uid)
            if row is None:
                raise NotFound(f"no smartcut request {uid!r}")
            row.edits = edits
            row.updated_at = utcnow()
            s.flush()
            return SmartcutRequestRecord.of(row)
