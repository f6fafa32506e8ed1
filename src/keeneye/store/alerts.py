"""Alerts: instances of a rule firing for one label set, silences, and every notification attempt.

One place for the queries the rules engine, ``keeneye alerts`` and ``/v1/alerts`` share. The
engine's methods take every timestamp from the caller, so it can run on an injected clock. Queries
stay bounded: by primary key, by the indexed ``fingerprint`` / ``alert_id`` / ``ends_at``, or a LIMIT.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any, Unpack

from sqlalchemy import delete, func, select, update

from keeneye.domain import NotFound
from keeneye.store.engine import Database, rowcount, utcnow
from keeneye.store.records import (
    ALERT_STATES,
    OPEN_ALERT_STATES,
    AlertChanges,
    AlertRecord,
    NotificationRecord,
    SilenceRecord,
)
from keeneye.store.schema import AlertNotificationRow, AlertRow, AlertSilenceRow


class AlertRepository(Database):
    """Alert, silence and notification reads and writes of :class:`~keeneye.store.ResultsDB`."""

    def upsert_alert(
        self,
        rule: str,
        fingerprint: str,
        *,
        severity: str,
        state: str,
        labels: Mapping[str, Any] | None = None,
        annotations: Mapping[str, Any] | None = None,
        value: float | None = None,
    ) -> AlertRecord:
        """Create or advance the open (not resolved) alert with this fingerprint.

        ``pending`` → ``firing`` sets ``fired_at``; ``resolved`` sets ``resolved_at`` and closes the
        instance, so the next firing of the same rule+labels starts a new row (the history stays).
        """
        if state not in ALERT_STATES:
            raise ValueError(f"alert state {state!r} is not one of {ALERT_STATES}")
        now = utcnow()
        with self.session() as s:
            row = s.scalars(
                select(AlertRow)
                .where(AlertRow.fingerprint == fingerprint, AlertRow.state != "resolved")
                .order_by(AlertRow.id.desc())
                .limit(1)
                .with_for_update()
            ).first()
            if row is None:
                if state == "resolved":
                    raise NotFound(f"no open alert with fingerprint {fingerprint}")
                row = AlertRow(
                    rule=rule,
                    fingerprint=fingerprint,
                    severity=severity,
                    state=state,
                    labels=dict(labels or {}),
                    annotations=dict(annotations or {}),
                    value=value,
                    started_at=now,
                    escalation_level=0,
                    updated_at=now,
                )
                s.add(row)
            else:
                row.state = state
                row.severity = severity
                row.value = value
                if annotations is not None:
                    row.annotations = dict(annotations)
                row.updated_at = now
            if state == "firing" and row.fired_at is None:
                row.fired_at = now
            if state == "resolved":
                row.resolved_at = now
            s.flush()
            return AlertRecord.from_row(row)

    def active_alerts(self) -> list[AlertRecord]:
        """Alerts pending or firing, oldest first."""
        stmt = select(AlertRow).where(AlertRow.state != "resolved").order_by(AlertRow.started_at, AlertRow.id)
        with self.session() as s:
            return [AlertRecord.from_row(r) for r in s.scalars(stmt)]

    def ack_alert(self, alert_id: int, by: str) -> bool:
        """Acknowledge an alert (stops escalation); ``False`` when there is no such alert."""
        now = utcnow()
        stmt = (
            update(AlertRow).where(AlertRow.id == alert_id).values(acked_by=by, acked_at=now, updated_at=now)
        )
        with self.session() as s:
            return rowcount(s.execute(stmt)) == 1

    def open_alerts(self, limit: int) -> list[AlertRecord]:
        """Pending and firing alerts, oldest first (the engine reads them once at start)."""
        stmt = (
            select(AlertRow).where(AlertRow.state.in_(OPEN_ALERT_STATES)).order_by(AlertRow.id).limit(limit)
        )
        with self.session() as s:
            return [AlertRecord.from_row(r) for r in s.scalars(stmt)]

    def open_alerts_of_pipeline(self, pipeline: str, limit: int) -> list[AlertRecord]:
        """Open alerts labelled with ``pipeline``, oldest first."""
        stmt = (
            select(AlertRow)
            .where(AlertRow.state != "resolved", AlertRow.labels["pipeline"].as_string() == pipeline)
            .order_by(AlertRow.started_at, AlertRow.id)
            .limit(limit)
        )
        with self.session() as s:
            return [AlertRecord.from_row(r) for r in s.scalars(stmt)]

    def alerts_by_id(self, ids: Collection[int]) -> dict[int, AlertRecord]:
        if not ids:
            return {}
        with self.session() as s:
            rows = s.scalars(select(AlertRow).where(AlertRow.id.in_(sorted(ids))))
            return {r.id: AlertRecord.from_row(r) for r in rows}

    def get_alert(self, alert_id: int) -> AlertRecord | None:
        with self.session() as s:
            row = s.get(AlertRow, alert_id)
            return None if row is None else AlertRecord.from_row(row)

    def list_alerts(self, *, active_only: bool, limit: int) -> list[AlertRecord]:
        """Active alerts (oldest first), or the newest ``limit`` alerts of any state."""
        if active_only:
            stmt = (
                select(AlertRow)
                .where(AlertRow.state.in_(OPEN_ALERT_STATES))
                .order_by(AlertRow.id)
                .limit(limit)
            )
        else:
            stmt = select(AlertRow).order_by(AlertRow.id.desc()).limit(limit)
        with self.session() as s:
            return [AlertRecord.from_row(r) for r in s.scalars(stmt)]

    def create_alert(
        self,
        *,
        rule: str,
        fingerprint: str,
        severity: str,
        state: str,
        labels: Mapping[str, str],
        annotations: Mapping[str, str],
        value: float | None,
        now: datetime,
    ) -> AlertRecord:
        row = AlertRow(
            rule=rule,
            fingerprint=fingerprint,
            severity=severity,
            state=state,
            labels=dict(labels),
            annotations=dict(annotations),
            value=value,
            started_at=now,
            fired_at=now if state == "firing" else None,
            escalation_level=0,
            updated_at=now,
        )
        with self.session() as s:
            s.add(row)
            s.flush()
            return AlertRecord.from_row(row)

    def update_alert(
        self, alert_id: int, now: datetime, **values: Unpack[AlertChanges]
    ) -> AlertRecord | None:
        """Set columns of one alert; ``None`` when it was deleted meanwhile."""
        with self.session() as s:
            row = s.get(AlertRow, alert_id)
            if row is None:
                return None
            for key, value in values.items():
                setattr(row, key, value)
            row.updated_at = now
            s.flush()
            return AlertRecord.from_row(row)

    def forget_pending_alert(self, alert_id: int) -> None:
        """Delete the alert if it is still pending."""
        with self.session() as s:
            s.execute(delete(AlertRow).where(AlertRow.id == alert_id, AlertRow.state == "pending"))

    def acknowledge_alert(self, alert_id: int, by: str, now: datetime) -> AlertRecord | None:
        """Acknowledge an open alert unless it is acknowledged already (the first acker stays).

        Returns the alert as it is afterwards (a resolved one unchanged), ``None`` when there is none.
        """
        with self.session() as s:
            row = s.get(AlertRow, alert_id)
            if row is None:
                return None
            if row.state != "resolved" and row.acked_at is None:
                row.acked_by = by
                row.acked_at = now
                row.updated_at = now
            s.flush()
            return AlertRecord.from_row(row)

    # ------------------------------------------------------------------ silences

    def add_silence(
        self,
        *,
        rule: str | None,
        matchers: Mapping[str, str],
        starts_at: datetime,
        ends_at: datetime,
        created_by: str,
        reason: str,
    ) -> SilenceRecord:
        row = AlertSilenceRow(
            rule=rule,
            matchers=dict(matchers),
            created_by=created_by,
            reason=reason,
            starts_at=starts_at,
            ends_at=ends_at,
        )
        with self.session() as s:
            s.add(row)
            s.flush()
            return SilenceRecord.from_row(row)

    def active_silences(self, now: datetime, limit: int) -> list[SilenceRecord]:
        """Silences in force at ``now`` (by the indexed ``ends_at``), ending soonest first."""
        stmt = (
            select(AlertSilenceRow)
            .where(AlertSilenceRow.ends_at > now, AlertSilenceRow.starts_at <= now)
            .order_by(AlertSilenceRow.ends_at, AlertSilenceRow.id)
            .limit(limit)
        )
        with self.session() as s:
            return [SilenceRecord.from_row(r) for r in s.scalars(stmt)]

    def expire_silence(self, silence_id: int, now: datetime) -> SilenceRecord | None:
        """End a silence at ``now`` (not before it started); ``None`` when there is no such silence."""
        with self.session() as s:
            row = s.get(AlertSilenceRow, silence_id)
            if row is None:
                return None
            if row.ends_at > now:
                row.ends_at = max(now, row.starts_at)
            s.flush()
            return SilenceRecord.from_row(row)

    # ------------------------------------------------------------------ notifications

    def record_notification(
        self,
        *,
        alert_id: int,
        channel: str,
        level: int,
        kind: str,
        ok: bool,
        error: str | None,
        sent_at: datetime,
    ) -> None:
        row = AlertNotificationRow(
            alert_id=alert_id,
            channel=channel,
            level=level,
            kind=kind,
            ok=ok,
            error=(error or None) and error[:2000],
            sent_at=sent_at,
        )
        with self.session() as s:
            s.add(row)

    def alert_notifications(self, alert_id: int, limit: int) -> list[NotificationRecord]:
        stmt = (
            select(AlertNotificationRow)
            .where(AlertNotificationRow.alert_id == alert_id)
            .order_by(AlertNotificationRow.id)
            .limit(limit)
        )
        with self.session() as s:
            return [NotificationRecord.from_row(r) for r in s.scalars(stmt)]

    def delivered_channels(self, alert_id: int) -> dict[str, int]:
        """Channels that accepted a firing message about this alert → the highest level they got it at."""
        stmt = (
            select(AlertNotificationRow.channel, func.max(AlertNotificationRow.level))
            .where(
                AlertNotificationRow.alert_id == alert_id,
                AlertNotificationRow.ok.is_(True),
                AlertNotificationRow.kind != "resolved",
            )
            .group_by(AlertNotificationRow.channel)
        )
        with self.session() as s:
            return {str(channel): int(level) for channel, level in s.execute(stmt)}

    def level_reached_at(self, alert_id: int, level: int) -> datetime | None:
        """When the alert was first sent at this escalation level (the escalation timer's start)."""
        stmt = select(func.min(AlertNotificationRow.sent_at)).where(
            AlertNotificationRow.alert_id == alert_id,
            AlertNotificationRow.level == level,
            AlertNotificationRow.kind.in_(("firing", "escalated")),
        )
        with self.session() as s:
            value = s.execute(stmt).scalar_one_or_none()
        if value is None:
            return None
        # func.min bypasses the column type on SQLite: normalise to an aware UTC datetime.
        return _as_utc(value)


def _as_utc(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
