"""Alerts, silences and notification attempts as the rules engine, ``keeneye alerts`` and
``/v1/alerts`` use them: the people-facing checks and errors over the results database's queries.

Every timestamp is passed in by the caller, so the engine can run on an injected clock. The queries
(``keeneye.store``) stay bounded: by primary key, by an indexed column, or with a LIMIT.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any, Unpack

from keeneye.domain import InvalidInput, JsonObject, NotFound, parse_duration
from keeneye.store import (
    OPEN_ALERT_STATES,
    AlertChanges,
    AlertRecord,
    NotificationRecord,
    ResultsDB,
    SilenceRecord,
)

OPEN_STATES = OPEN_ALERT_STATES
DEFAULT_LIMIT = 200
MAX_LIMIT = 10_000


def alert_json(record: Any) -> JsonObject:
    """An alert (:class:`AlertRecord` or the engine's ``AlertState``) as the API and ``--json`` show
    it, timestamps in ISO 8601 (UTC)."""
    data: JsonObject = asdict(record)
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
        return self.db.open_alerts(limit)

    def by_ids(self, ids: Collection[int]) -> dict[int, AlertRecord]:
        return self.db.alerts_by_id(ids)

    def get(self, alert_id: int) -> AlertRecord:
        record = self.db.get_alert(alert_id)
        if record is None:
            raise NotFound(f"alert {alert_id} does not exist", fix="see `keeneye alerts list --all`")
        return record

    def list_alerts(self, *, active_only: bool = True, limit: int = DEFAULT_LIMIT) -> list[AlertRecord]:
        """Active alerts (oldest first), or the newest ``limit`` alerts of any state."""
        return self.db.list_alerts(active_only=active_only, limit=max(1, min(limit, MAX_LIMIT)))

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
        return self.db.create_alert(
            rule=rule,
            fingerprint=fingerprint,
            severity=severity,
            state=state,
            labels=labels,
            annotations=annotations,
            value=value,
            now=now,
        )

    def update(self, alert_id: int, now: datetime, **values: Unpack[AlertChanges]) -> AlertRecord | None:
        """Set columns of one alert; ``None`` when it was deleted meanwhile."""
        return self.db.update_alert(alert_id, now, **values)

    def forget_pending(self, alert_id: int) -> None:
        """A pending alert whose condition cleared before ``for`` never existed (as in Prometheus)."""
        self.db.forget_pending_alert(alert_id)

    def ack(self, alert_id: int, by: str, now: datetime) -> AlertRecord:
        """Acknowledge (stops escalation). Idempotent: a second ack keeps the first acker."""
        record = self.db.acknowledge_alert(alert_id, by, now)
        if record is None:
            raise NotFound(f"alert {alert_id} does not exist", fix="see `keeneye alerts list`")
        if record.state == "resolved":
            raise InvalidInput(
                "alert_resolved",
                f"alert {alert_id} ({record.rule}) is already resolved; there is nothing to acknowledge",
                status=409,
            )
        return record

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
        return self.db.add_silence(
            rule=rule,
            matchers=matchers,
            starts_at=starts_at,
            ends_at=ends_at,
            created_by=created_by,
            reason=reason.strip(),
        )

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
        return self.db.active_silences(now, limit)

    def silenced_ids(self, alerts: Collection[AlertRecord], now: datetime) -> set[int]:
        """Which of these alerts a silence in force at ``now`` matches (the engine records it on its
        next tick as ``silenced_until``; this answers at once, e.g. right after ``alerts silence``)."""
        open_alerts = [a for a in alerts if a.state != "resolved"]
        if not open_alerts:
            return set()
        silences = self.active_silences(now)
        return {a.id for a in open_alerts if any(s.matches(a.rule, a.labels) for s in silences)}

    def expire_silence(self, silence_id: int, now: datetime) -> SilenceRecord:
        record = self.db.expire_silence(silence_id, now)
        if record is None:
            raise NotFound(f"silence {silence_id} does not exist", fix="see `keeneye alerts silences`")
        return record

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
        self.db.record_notification(
            alert_id=alert_id, channel=channel, level=level, kind=kind, ok=ok, error=error, sent_at=sent_at
        )

    def notifications(self, alert_id: int, limit: int = DEFAULT_LIMIT) -> list[NotificationRecord]:
        return self.db.alert_notifications(alert_id, limit)

    def delivered_channels(self, alert_id: int) -> dict[str, int]:
        """Channels that accepted a firing message about this alert → the highest level they got it at."""
        return self.db.delivered_channels(alert_id)

    def level_reached_at(self, alert_id: int, level: int) -> datetime | None:
        """When the alert was first sent at this escalation level (the escalation timer's start)."""
        return self.db.level_reached_at(alert_id, level)


__all__ = ["OPEN_STATES", "AlertStore", "NotificationRecord", "SilenceRecord", "alert_json"]
