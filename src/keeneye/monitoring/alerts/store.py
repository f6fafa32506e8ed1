"""Alert rows, silences and notification attempts in the results database.

One place for the queries the rules engine, ``keeneye alerts`` and ``/v1/alerts`` share. Every
timestamp is passed in by the caller, so the engine can run on an injected clock. Queries stay
bounded: by primary key, by the indexed ``fingerprint`` / ``alert_id`` / ``ends_at``, or with a LIMIT.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select

from keeneye.domain import InvalidInput, NotFound
from keeneye.monitoring.alerts.rules import parse_duration
from keeneye.store.db import Alert, AlertNotification, AlertRecord, AlertSilence, ResultsDB

OPEN_STATES = ("pending", "firing")
DEFAULT_LIMIT = 200
MAX_LIMIT = 10_000


@dataclass(frozen=True)
class SilenceRecord:
    id: int
    rule: str | None
    matchers: dict[str, str]
    created_by: str
    reason: str
    starts_at: datetime
    ends_at: datetime

    @classmethod
    def from_row(cls, row: AlertSilence) -> SilenceRecord:
        return cls(
            row.id,
            row.rule,
            {str(k): str(v) for k, v in row.matchers.items()},
            row.created_by,
            row.reason,
            row.starts_at,
            row.ends_at,
        )

    def active(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at

    def matches(self, rule: str, labels: Mapping[str, Any]) -> bool:
        """Same rule (when the silence names one) and every matcher equal to the alert's label."""
        if self.rule is not None and self.rule != rule:
            return False
        return all(str(labels.get(k, "")) == v for k, v in self.matchers.items())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class NotificationRecord:
    id: int
    alert_id: int
    channel: str
    level: int
    kind: str
    ok: bool
    error: str | None
    sent_at: datetime

    @classmethod
    def from_row(cls, row: AlertNotification) -> NotificationRecord:
        return cls(row.id, row.alert_id, row.channel, row.level, row.kind, row.ok, row.error, row.sent_at)


def alert_json(record: Any) -> dict[str, Any]:
    """An alert (:class:`AlertRecord` or the engine's ``AlertState``) as the API and ``--json`` show
    it, timestamps in ISO 8601 (UTC)."""
    data = asdict(record)
    for key, value in data.items():
        if isinstance(value, datetime):
            data[key] = value.isoformat()
    return data


class AlertStore:
    """Alert, silence and notification queries over one :class:`ResultsDB`."""

    def __init__(self, db: ResultsDB) -> None:
        self.db = db

    # ------------------------------------------------------------------ alerts

    def open_alerts(self, limit: int = MAX_LIMIT) -> list[AlertRecord]:
        """Pending and firing alerts, oldest first (the engine reads them once at start)."""
        stmt = select(Alert).where(Alert.state.in_(OPEN_STATES)).order_by(Alert.id).limit(limit)
        with self.db.session() as s:
            return [AlertRecord.from_row(r) for r in s.scalars(stmt)]

    def by_ids(self, ids: Collection[int]) -> dict[int, AlertRecord]:
        if not ids:
            return {}
        with self.db.session() as s:
            rows = s.scalars(select(Alert).where(Alert.id.in_(sorted(ids))))
            return {r.id: AlertRecord.from_row(r) for r in rows}

    def get(self, alert_id: int) -> AlertRecord:
        with self.db.session() as s:
            row = s.get(Alert, alert_id)
            if row is None:
                raise NotFound(f"alert {alert_id} does not exist", fix="see `keeneye alerts list --all`")
            return AlertRecord.from_row(row)

    def list_alerts(self, *, active_only: bool = True, limit: int = DEFAULT_LIMIT) -> list[AlertRecord]:
        """Active alerts (oldest first), or the newest ``limit`` alerts of any state."""
        limit = max(1, min(limit, MAX_LIMIT))
        if active_only:
            stmt = select(Alert).where(Alert.state.in_(OPEN_STATES)).order_by(Alert.id).limit(limit)
        else:
            stmt = select(Alert).order_by(Alert.id.desc()).limit(limit)
        with self.db.session() as s:
            return [AlertRecord.from_row(r) for r in s.scalars(stmt)]

    def create(
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
        row = Alert(
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
        with self.db.session() as s:
            s.add(row)
            s.flush()
            return AlertRecord.from_row(row)

    def update(self, alert_id: int, now: datetime, **values: Any) -> AlertRecord | None:
        """Set columns of one alert; ``None`` when it was deleted meanwhile."""
        with self.db.session() as s:
            row = s.get(Alert, alert_id)
            if row is None:
                return None
            for key, value in values.items():
                setattr(row, key, value)
            row.updated_at = now
            s.flush()
            return AlertRecord.from_row(row)

    def forget_pending(self, alert_id: int) -> None:
        """A pending alert whose condition cleared before ``for`` never existed (as in Prometheus)."""
        with self.db.session() as s:
            s.execute(delete(Alert).where(Alert.id == alert_id, Alert.state == "pending"))

    def ack(self, alert_id: int, by: str, now: datetime) -> AlertRecord:
        """Acknowledge (stops escalation). Idempotent: a second ack keeps the first acker."""
        with self.db.session() as s:
            row = s.get(Alert, alert_id)
            if row is None:
                raise NotFound(f"alert {alert_id} does not exist", fix="see `keeneye alerts list`")
            if row.state == "resolved":
                raise InvalidInput(
                    "alert_resolved",
                    f"alert {alert_id} ({row.rule}) is already resolved; there is nothing to acknowledge",
                    status=409,
                )
            if row.acked_at is None:
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
        if rule is None and not matchers:
            raise InvalidInput(
                "bad_silence", "a silence needs a rule or at least one label matcher", status=400
            )
        if not reason.strip():
            raise InvalidInput("bad_silence", "a silence needs a reason", status=400)
        if ends_at <= starts_at:
            raise InvalidInput("bad_silence", "a silence must last longer than zero", status=400)
        row = AlertSilence(
            rule=rule,
            matchers=dict(matchers),
            created_by=created_by,
            reason=reason.strip(),
            starts_at=starts_at,
            ends_at=ends_at,
        )
        with self.db.session() as s:
            s.add(row)
            s.flush()
            return SilenceRecord.from_row(row)

    def silence(
        self,
        known_rules: Collection[str],
        *,
        rule: str | None,
        matchers: Mapping[str, str],
        duration: str,
        reason: str,
        by: str,
        now: datetime,
    ) -> SilenceRecord:
        """Validate a silence as a person gives it (rule name, ``2h``) and store it; errors are 400s."""
        if rule is not None and rule not in known_rules:
            raise InvalidInput(
                "bad_silence",
                f"unknown rule {rule!r}; known: {', '.join(sorted(known_rules))}",
                status=400,
            )
        try:
            seconds = parse_duration(duration)
        except ValueError as exc:
            raise InvalidInput("bad_silence", f"duration: {exc}", status=400) from exc
        return self.add_silence(
            rule=rule,
            matchers=matchers,
            starts_at=now,
            ends_at=now + timedelta(seconds=seconds),
            created_by=by,
            reason=reason,
        )

    def active_silences(self, now: datetime, limit: int = MAX_LIMIT) -> list[SilenceRecord]:
        """Silences in force at ``now`` (by the indexed ``ends_at``), ending soonest first."""
        stmt = (
            select(AlertSilence)
            .where(AlertSilence.ends_at > now, AlertSilence.starts_at <= now)
            .order_by(AlertSilence.ends_at, AlertSilence.id)
            .limit(limit)
        )
        with self.db.session() as s:
            return [SilenceRecord.from_row(r) for r in s.scalars(stmt)]

    def silenced_ids(self, alerts: Collection[AlertRecord], now: datetime) -> set[int]:
        """Which of these alerts a silence in force at ``now`` matches (the engine records it on its
        next tick as ``silenced_until``; this answers at once, e.g. right after ``alerts silence``)."""
        open_alerts = [a for a in alerts if a.state != "resolved"]
        if not open_alerts:
            return set()
        silences = self.active_silences(now)
        return {a.id for a in open_alerts if any(s.matches(a.rule, a.labels) for s in silences)}

    def expire_silence(self, silence_id: int, now: datetime) -> SilenceRecord:
        with self.db.session() as s:
            row = s.get(AlertSilence, silence_id)
            if row is None:
                raise NotFound(f"silence {silence_id} does not exist", fix="see `keeneye alerts silences`")
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
        row = AlertNotification(
            alert_id=alert_id,
            channel=channel,
            level=level,
            kind=kind,
            ok=ok,
            error=(error or None) and error[:2000],
            sent_at=sent_at,
        )
        with self.db.session() as s:
            s.add(row)

    def notifications(self, alert_id: int, limit: int = DEFAULT_LIMIT) -> list[NotificationRecord]:
        stmt = (
            select(AlertNotification)
            .where(AlertNotification.alert_id == alert_id)
            .order_by(AlertNotification.id)
            .limit(limit)
        )
        with self.db.session() as s:
            return [NotificationRecord.from_row(r) for r in s.scalars(stmt)]

    def delivered_channels(self, alert_id: int) -> dict[str, int]:
        """Channels that accepted a firing message about this alert → the highest level they got it at."""
        stmt = (
            select(AlertNotification.channel, func.max(AlertNotification.level))
            .where(
                AlertNotification.alert_id == alert_id,
                AlertNotification.ok.is_(True),
                AlertNotification.kind != "resolved",
            )
            .group_by(AlertNotification.channel)
        )
        with self.db.session() as s:
            return {str(channel): int(level) for channel, level in s.execute(stmt)}

    def level_reached_at(self, alert_id: int, level: int) -> datetime | None:
        """When the alert was first sent at this escalation level (the escalation timer's start)."""
        stmt = select(func.min(AlertNotification.sent_at)).where(
            AlertNotification.alert_id == alert_id,
            AlertNotification.level == level,
            AlertNotification.kind.in_(("firing", "escalated")),
        )
        with self.db.session() as s:
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


__all__ = ["OPEN_STATES", "AlertStore", "NotificationRecord", "SilenceRecord", "alert_json"]
