"""The embedded rules engine: evaluate the alert rules every tick, keep alert state, notify, escalate.

``keeneye up``'s scheduler calls :meth:`RulesEngine.evaluate` every ``alerting.interval_seconds``.
One tick:

1. reads the current samples from a :class:`~keeneye.monitoring.alerts.source.MetricSource` and keeps
   a short in-memory history (as long as the longest rule window) for ``rate``/``increase``;
2. evaluates every rule exactly as its PromQL rendering (see :mod:`.rules`) would — Prometheus'
   extrapolated ``rate``/``increase`` with counter resets, ``histogram_quantile`` with linear
   interpolation inside the bucket, ``sum by``, one-to-one ``on (by)`` matching — with the per-pipeline
   SLO thresholds and the pipeline specs' overrides (``alerts:``) applied to that pipeline's series;
3. moves alerts ``pending`` → ``firing`` (once the condition held for ``for``: the pipeline spec's, else
   ``alerting.for_overrides``', else the rule's) → ``resolved``; an alert
   is identified by its fingerprint (rule + sorted labels), so a condition that stays true is one row,
   however many ticks see it. State lives in the ``alerts`` table: a restarted engine continues;
4. notifies: level 0 of ``alerting.route`` on firing; a *critical* alert not acknowledged after
   ``escalate_after_minutes`` goes to the next channel (and so on, up the route); every
   ``repeat_minutes`` the channels reached so far are reminded; on resolve, the channels that got the
   alert are told. Silences suppress notifications, never state. Every attempt is a row in
   ``alert_notifications`` and a count in ``keeneye_alert_notifications``; a failing channel is logged
   and the tick goes on.

Counters that appear between two ticks are taken to have been 0 at the previous tick (they did not
exist then), like Prometheus with created-timestamp zero ingestion: the first dead letter of a
pipeline alerts instead of being lost to the lack of an earlier sample.

Time comes from the injectable ``clock`` (epoch seconds), so tests step through minutes instantly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import operator
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from keeneye.domain import ConfigError, JsonObject, parse_duration
from keeneye.metrics import Metrics
from keeneye.monitoring.alerts.channels import (
    Channel,
    Notification,
    NotificationKind,
    build_channels,
    format_value,
)
from keeneye.monitoring.alerts.rules import AlertRule, Selector, load_rules
from keeneye.monitoring.alerts.source import MetricSource, Sample, default_source
from keeneye.monitoring.alerts.store import AlertStore, SilenceRecord
from keeneye.pipelines import PipelineCatalog, PipelineSpec
from keeneye.settings import AlertingSettings, Settings
from keeneye.store import AlertChanges, AlertRecord, ResultsDB, open_results_db

log = logging.getLogger(__name__)

LabelKey = tuple[tuple[str, str], ...]
Point = tuple[float, float]  # (epoch seconds, value)

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
_COUNTER_SUFFIXES = ("_total", "_bucket", "_count", "_sum")
_TEMPLATE = re.compile(r"\{\{\s*\$(?:labels\.([A-Za-z_][A-Za-z0-9_]*)|(value))\s*\}\}")


# --------------------------------------------------------------------------------------------------
# PromQL functions (pure)
# --------------------------------------------------------------------------------------------------


def extrapolated_delta(
    points: Sequence[Point], range_start: float, range_end: float, *, is_counter: bool, is_rate: bool
) -> float | None:
    """Prometheus' ``increase`` (``is_rate=False``) or ``rate`` over the points of one range.

    The points are those with ``range_start < t <= range_end``. Counter resets (a value lower than the
    one before) add the value before the reset. The result is extrapolated to the range edges when the
    first/last sample is within 1.1 average intervals of them (else by half an interval), never to
    before the counter's zero point. Fewer than two points → ``None`` (no value), as in PromQL.
    """
    if len(points) < 2:
        return None
    first_t, first_v = points[0]
    last_t, last_v = points[-1]
    result = last_v - first_v
    if is_counter:
        previous = 0.0
        for _, v in points:
            if v < previous:
                result += previous
            previous = v
    sampled = last_t - first_t
    if sampled <= 0:
        return None
    average = sampled / (len(points) - 1)
    threshold = average * 1.1
    to_start = first_t - range_start
    to_end = range_end - last_t
    if to_start >= threshold:
        to_start = average / 2
    if is_counter and result > 0 and first_v >= 0:
        to_zero = sampled * (first_v / result)
        to_start = min(to_start, to_zero)
    if to_end >= threshold:
        to_end = average / 2
    factor = (sampled + to_start + to_end) / sampled
    if is_rate:
        factor /= range_end - range_start
    return result * factor


def bucket_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile`` on (upper bound, cumulative count) pairs of one group.

    Linear interpolation inside the bucket that holds rank ``q × total``; the +Inf bucket answers with
    the highest finite bound. No +Inf bucket, fewer than two buckets or no observations → ``None``.
    """
    merged: dict[float, float] = {}
    for upper, count in buckets:
        merged[upper] = merged.get(upper, 0.0) + count
    ordered = sorted(merged.items())
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return None
    counts: list[float] = []
    for _, count in ordered:  # rates of sums can dip by float noise: keep the counts monotonic
        counts.append(max(count, counts[-1]) if counts else count)
    total = counts[-1]
    if not total > 0:
        return None
    rank = q * total
    b = next(i for i, c in enumerate(counts) if c >= rank)
    if b == len(ordered) - 1:
        return ordered[-2][0]
    if b == 0 and ordered[0][0] <= 0:
        return ordered[0][0]
    start, end, count = 0.0, ordered[b][0], counts[b]
    if b > 0:
        start = ordered[b - 1][0]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    if count <= 0:
        return end
    return start + (end - start) * (rank / count)


def _label_key(labels: Mapping[str, str]) -> LabelKey:
    return tuple(sorted(labels.items()))


def fingerprint(rule: str, labels: Mapping[str, str]) -> str:
    """Identity of one alert: the rule and its sorted labels (64 hex characters)."""
    body = json.dumps([rule, sorted(labels.items())], separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def render(template: str, labels: Mapping[str, str], value: float | None) -> str:
    """``{{ $labels.x }}`` and ``{{ $value }}`` as in Prometheus templates (a missing label → "")."""

    def sub(m: re.Match[str]) -> str:
        if m.group(2):
            return format_value(value) if value is not None else ""
        return str(labels.get(m.group(1), ""))

    return _TEMPLATE.sub(sub, template)


class _Matcher:
    """Label matchers of a selector: exact values, or ``~regex`` matched in full (PromQL ``=~``)."""

    def __init__(self, match: Mapping[str, str]) -> None:
        self.exact = {k: v for k, v in match.items() if not v.startswith("~")}
        self.regex = {k: re.compile(v[1:]) for k, v in match.items() if v.startswith("~")}

    def __call__(self, labels: Mapping[str, str]) -> bool:
        for k, v in self.exact.items():
            if labels.get(k, "") != v:
                return False
        return all(r.fullmatch(labels.get(k, "")) for k, r in self.regex.items())


def _group(labels: Mapping[str, str], by: Sequence[str]) -> LabelKey:
    """``sum by (by)``: the kept labels; empty ones are absent, as in PromQL."""
    return tuple(sorted((k, labels[k]) for k in by if labels.get(k)))


# --------------------------------------------------------------------------------------------------
# Sample history
# --------------------------------------------------------------------------------------------------


class SampleHistory:
    """The recent values of the series the range rules read, bounded by the longest window."""

    def __init__(self, names: Iterable[str], keep_seconds: float) -> None:
        self.names = set(names)
        self.keep_seconds = keep_seconds
        self._series: dict[str, dict[LabelKey, deque[Point]]] = {name: {} for name in self.names}
        self._last_tick: float | None = None

    def add(self, t: float, samples: Iterable[Sample]) -> None:
        seen: set[tuple[str, LabelKey]] = set()
        for s in samples:
            if s.name not in self.names or math.isnan(s.value):
                continue
            key = _label_key(s.labels)
            series = self._series[s.name]
            points = series.get(key)
            if points is None:
                points = series[key] = deque()
                if self._last_tick is not None and s.name.endswith(_COUNTER_SUFFIXES):
                    points.append((self._last_tick, 0.0))  # it did not exist at the last tick: 0
            if (s.name, key) in seen:
                continue  # the same series twice in one exposition: keep the first
            seen.add((s.name, key))
            if points and points[-1][0] >= t:  # evaluated twice at one instant: the newer value wins
                points[-1] = (t, s.value)
            else:
                points.append((t, s.value))
        self._last_tick = t
        self._prune(t)

    def _prune(self, now: float) -> None:
        horizon = now - self.keep_seconds
        for series in self._series.values():
            for key in list(series):
                points = series[key]
                while points and points[0][0] <= horizon:
                    points.popleft()
                if not points:
                    del series[key]

    def range(self, name: str, start: float, end: float) -> Iterable[tuple[dict[str, str], list[Point]]]:
        """Every series of ``name`` with its points in ``(start, end]``."""
        for key, points in self._series.get(name, {}).items():
            yield dict(key), [p for p in points if start < p[0] <= end]

    def series_count(self) -> int:
        return sum(len(s) for s in self._series.values())


# --------------------------------------------------------------------------------------------------
# Rule evaluation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleResult:
    """One element of a rule's result vector and whether its condition holds."""

    labels: dict[str, str]
    value: float
    threshold: float | None
    active: bool
    for_seconds: float


@dataclass(frozen=True)
class AlertState:
    """An alert as one tick left it (``resolved`` only in the tick that resolved it)."""

    id: int
    rule: str
    fingerprint: str
    severity: str
    state: str
    labels: JsonObject
    annotations: JsonObject
    value: float | None
    started_at: datetime
    fired_at: datetime | None
    resolved_at: datetime | None
    acked_by: str | None
    escalation_level: int
    silenced: bool

    @classmethod
    def of(cls, record: AlertRecord, *, silenced: bool) -> AlertState:
        return cls(
            id=record.id,
            rule=record.rule,
            fingerprint=record.fingerprint,
            severity=record.severity,
            state=record.state,
            labels=dict(record.labels),
            annotations=dict(record.annotations),
            value=record.value,
            started_at=record.started_at,
            fired_at=record.fired_at,
            resolved_at=record.resolved_at,
            acked_by=record.acked_by,
            escalation_level=record.escalation_level,
            silenced=silenced,
        )


class RulesEngine:
    """Evaluates ``rules`` against ``source`` each :meth:`evaluate`; see the module docstring."""

    def __init__(
        self,
        rules: Sequence[AlertRule],
        catalog: PipelineCatalog,
        db: ResultsDB,
        channels: Mapping[str, Channel],
        alerting: AlertingSettings,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        *,
        source: MetricSource,
    ) -> None:
        self.rules = list(rules)
        unknown = sorted(set(alerting.for_overrides) - {r.name for r in self.rules})
        if unknown:
            raise ConfigError(
                "alerting.for_overrides",
                f"no alert rule named {', '.join(unknown)}",
                fix=f"use the names of the rules: {', '.join(sorted(r.name for r in self.rules))}",
            )
        # `for` of the configuration (a drill, a test) instead of the rule's; the rule stays as it is.
        self._for_overrides = {name: parse_duration(v) for name, v in alerting.for_overrides.items()}
        self.catalog = catalog
        self.store = AlertStore(db)
        self.channels = dict(channels)
        self.alerting = alerting
        self.metrics = metrics
        self.clock = clock
        self.source = source
        self._matchers: dict[int, _Matcher] = {}
        range_names = {name for rule in self.rules for name in _range_metrics(rule)}
        longest = max((r.window_seconds for r in self.rules if _range_metrics(r)), default=0.0)
        # One extra tick of slack so a full window always has its first sample.
        self.history = SampleHistory(range_names, longest + 2 * alerting.interval_seconds)
        self._open: dict[str, AlertRecord] | None = None
        self._specs: dict[str, PipelineSpec | None] = {}
        self._gauge_keys: set[tuple[str, str, str]] = set()
        # The last tick's result vector per rule (active or not): for `alerts evaluate` and tests.
        self.last_results: dict[str, list[RuleResult]] = {}

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        db: ResultsDB | None = None,
        catalog: PipelineCatalog | None = None,
        metrics: Metrics | None = None,
        source: MetricSource | None = None,
        channels: Mapping[str, Channel] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> RulesEngine:
        """The engine as ``keeneye up`` runs it: packaged + configured rules, the configured channels,
        the default metric source. Raises :class:`~keeneye.domain.InvalidInput` for a bad rule file."""

        return cls(
            load_rules(settings.alerting.rules),
            catalog or PipelineCatalog(settings),
            db or open_results_db(settings),
            build_channels(settings.alerting) if channels is None else channels,
            settings.alerting,
            metrics,
            clock,
            source=source or default_source(settings),
        )

    # ------------------------------------------------------------------ one tick

    def evaluate(self) -> list[AlertState]:
        """One tick: read, evaluate, persist, notify. Returns the open alerts (and those just resolved).

        Raises :class:`~keeneye.monitoring.alerts.source.MetricsUnavailable` when the source has no
        data — nothing changes then (an API restart must not resolve every alert).
        """
        now = self.clock()
        ts = datetime.fromtimestamp(now, UTC)
        samples = self.source.samples()
        self.history.add(now, samples)
        current: dict[str, list[Sample]] = {}
        for s in samples:
            current.setdefault(s.name, []).append(s)
        self._specs = {}

        active: dict[str, tuple[AlertRule, RuleResult, dict[str, str]]] = {}
        evaluated: set[str] = set()
        for rule in self.rules:
            try:
                results = self.evaluate_rule(rule, now, current)
            except Exception:
                # A broken rule keeps its alerts as they are and never stops the others.
                log.exception("alert rule failed to evaluate", extra={"rule": rule.name})
                self.last_results.pop(rule.name, None)
                continue
            evaluated.add(rule.name)
            self.last_results[rule.name] = results
            for r in results:
                if r.active:
                    labels = {**r.labels, **rule.labels}
                    active[fingerprint(rule.name, labels)] = (rule, r, labels)

        open_alerts = self._load_open(ts)
        silences = self.store.active_silences(ts)
        rule_names = {r.name for r in self.rules}
        states: list[AlertState] = []

        for fp, (rule, result, labels) in active.items():
            record = self._advance(open_alerts.get(fp), fp, rule, result, labels, ts)
            open_alerts[fp] = record

        resolved: list[AlertRecord] = []
        for fp, record in list(open_alerts.items()):
            if fp in active or (record.rule in rule_names and record.rule not in evaluated):
                continue
            del open_alerts[fp]
            if record.state == "pending":
                self.store.forget_pending(record.id)
                continue
            done = self.store.update(record.id, ts, state="resolved", resolved_at=ts)
            if done is not None:
                resolved.append(done)

        for fp, record in list(open_alerts.items()):
            silence = _silenced_until(silences, record)
            if record.silenced_until != silence:
                record = self.store.update(record.id, ts, silenced_until=silence) or record
            if record.state == "firing" and silence is None:
                record = self._notify_firing(record, ts)
            open_alerts[fp] = record
            states.append(AlertState.of(record, silenced=silence is not None))
        for record in resolved:
            silenced = _silenced_until(silences, record) is not None
            if not silenced:
                self._notify_resolved(record, ts)
            states.append(AlertState.of(record, silenced=silenced))

        self._open = open_alerts
        self._export_gauge(open_alerts.values())
        log.debug(
            "alert rules evaluated",
            extra={"rules": len(evaluated), "open": len(open_alerts), "resolved": len(resolved)},
        )
        return states

    def _load_open(self, ts: datetime) -> dict[str, AlertRecord]:
        """The open alerts, re-read (by primary key) so acks and silences from the API/CLI count."""
        if self._open is None:
            loaded: dict[str, AlertRecord] = {}
            for record in self.store.open_alerts():  # oldest first
                older = loaded.get(record.fingerprint)
                if older is not None:  # two open rows for one fingerprint: keep the newest
                    self.store.update(older.id, ts, state="resolved", resolved_at=ts)
                loaded[record.fingerprint] = record
            return loaded
        fresh = self.store.by_ids([r.id for r in self._open.values()])
        return {
            fp: fresh[r.id]
            for fp, r in self._open.items()
            if r.id in fresh and fresh[r.id].state != "resolved"
        }

    def _advance(
        self,
        record: AlertRecord | None,
        fp: str,
        rule: AlertRule,
        result: RuleResult,
        labels: dict[str, str],
        ts: datetime,
    ) -> AlertRecord:
        annotations = {k: render(v, labels, result.value) for k, v in rule.annotations.items()}
        if record is None:
            state = "firing" if result.for_seconds <= 0 else "pending"
            log.info("alert %s", state, extra={"rule": rule.name, "labels": labels, "value": result.value})
            return self.store.create(
                rule=rule.name,
                fingerprint=fp,
                severity=rule.severity,
                state=state,
                labels=labels,
                annotations=annotations,
                value=result.value,
                now=ts,
            )
        changes: AlertChanges = {}
        if record.state == "pending" and (ts - record.started_at).total_seconds() >= result.for_seconds:
            changes["state"], changes["fired_at"] = "firing", ts
            log.info("alert firing", extra={"rule": rule.name, "labels": labels, "value": result.value})
        if record.value != result.value:
            changes["value"] = result.value
        if record.annotations != annotations:
            changes["annotations"] = annotations
        if record.severity != rule.severity:
            changes["severity"] = rule.severity
        if not changes:
            return record
        return self.store.update(record.id, ts, **changes) or record

    # ------------------------------------------------------------------ notifications

    def _notify_firing(self, record: AlertRecord, ts: datetime) -> AlertRecord:
        route = self.alerting.route
        if record.last_notified_at is None:
            self._send(record, route[0], 0, "firing", ts)
            return self.store.update(record.id, ts, last_notified_at=ts, escalation_level=0) or record
        level = record.escalation_level
        if record.severity == "critical" and record.acked_at is None and level + 1 < len(route):
            since = self.store.level_reached_at(record.id, level) or record.last_notified_at
            if ts - since >= timedelta(minutes=self.alerting.escalate_after_minutes):
                self._send(record, route[level + 1], level + 1, "escalated", ts)
                return (
                    self.store.update(record.id, ts, last_notified_at=ts, escalation_level=level + 1)
                    or record
                )
        if ts - record.last_notified_at >= timedelta(minutes=self.alerting.repeat_minutes):
            for lvl, name in enumerate(route[: level + 1]):
                self._send(record, name, lvl, "repeat", ts)
            return self.store.update(record.id, ts, last_notified_at=ts) or record
        return record

    def _notify_resolved(self, record: AlertRecord, ts: datetime) -> None:
        for name, level in sorted(self.store.delivered_channels(record.id).items(), key=lambda x: x[1]):
            self._send(record, name, level, "resolved", ts)

    def _send(self, record: AlertRecord, name: str, level: int, kind: NotificationKind, ts: datetime) -> bool:
        notification = Notification(
            alert_id=record.id,
            rule=record.rule,
            severity=record.severity,
            kind=kind,
            labels={str(k): str(v) for k, v in record.labels.items()},
            annotations={str(k): str(v) for k, v in record.annotations.items()},
            value=record.value,
            starts_at=record.fired_at or record.started_at,
            ends_at=record.resolved_at if kind == "resolved" else None,
            level=level,
            fingerprint=record.fingerprint,
        )
        channel = self.channels.get(name)
        error: str | None = None
        if channel is None:
            error = f"no channel named {name!r} is configured (alerting.channels)"
        else:
            try:
                channel.send(notification)
            except Exception as exc:  # any channel failure is recorded; the next channel still goes
                error = str(exc) or type(exc).__name__
        if error is not None:
            log.warning(
                "alert notification failed",
                extra={"alert_id": record.id, "channel": name, "kind": kind, "error": error},
            )
        self.store.record_notification(
            alert_id=record.id,
            channel=name,
            level=level,
            kind=kind,
            ok=error is None,
            error=error,
            sent_at=ts,
        )
        if self.metrics is not None:
            self.metrics.alert_notifications.labels(name, "true" if error is None else "false").inc()
        return error is None

    def _export_gauge(self, records: Iterable[AlertRecord]) -> None:
        if self.metrics is None:
            return
        counts: dict[tuple[str, str, str], int] = {}
        for r in records:
            key = (r.rule, r.severity, r.state)
            counts[key] = counts.get(key, 0) + 1
        for key in self._gauge_keys - counts.keys():
            self.metrics.alerts.labels(*key).set(0)
        for key, n in counts.items():
            self.metrics.alerts.labels(*key).set(n)
        self._gauge_keys |= counts.keys()

    # ------------------------------------------------------------------ rules

    def evaluate_rule(
        self, rule: AlertRule, now: float, current: Mapping[str, list[Sample]]
    ) -> list[RuleResult]:
        """The rule's result vector at ``now`` with thresholds and pipeline overrides applied."""
        values = self._vector(rule, now, current)
        out: list[RuleResult] = []
        for labels, value, other in values:
            pipeline = labels.get("pipeline")
            override = None
            if pipeline:
                spec = self._spec(pipeline)
                override = spec.alerts.get(rule.name) if spec is not None else None
            if override is not None and not override.enabled:
                continue
            for_seconds = self._for_overrides.get(rule.name, rule.for_seconds)
            if override is not None and override.for_ is not None:
                for_seconds = parse_duration(override.for_)
            if rule.kind == "compare":
                threshold: float | None = other
            elif override is not None and override.threshold is not None:
                threshold = override.threshold
            elif rule.threshold_from == "slo_p95":
                spec = self._spec(pipeline) if pipeline else None
                if spec is None:
                    continue  # no pipeline spec, no SLO: nothing to compare with
                threshold = spec.slo.p95_latency_ms / 1000.0
            else:
                threshold = rule.threshold
            if threshold is None or math.isnan(value):
                continue
            active = _OPS[rule.op](value, threshold)
            out.append(RuleResult(labels, value, threshold, active, for_seconds))
        return out

    def _spec(self, pipeline: str) -> PipelineSpec | None:
        if pipeline not in self._specs:
            self._specs[pipeline] = self.catalog.get(pipeline) if pipeline in self.catalog else None
        return self._specs[pipeline]

    def _matcher(self, selector: Selector | AlertRule) -> _Matcher:
        matcher = self._matchers.get(id(selector))
        if matcher is None:
            matcher = self._matchers[id(selector)] = _Matcher(selector.match)
        return matcher

    def _vector(
        self, rule: AlertRule, now: float, current: Mapping[str, list[Sample]]
    ) -> list[tuple[dict[str, str], float, float | None]]:
        """(labels, value, right-hand value for compare) per element of the rule's expression."""
        if rule.kind == "threshold":
            assert rule.metric is not None
            match = self._matcher(rule)
            return [(dict(s.labels), s.value, None) for s in current.get(rule.metric, []) if match(s.labels)]
        if rule.kind == "compare":
            return self._compare(rule, current)
        if rule.kind == "rate_ratio":
            assert rule.numerator is not None and rule.denominator is not None
            num = self._sum_rate(
                rule.numerator.metric, self._matcher(rule.numerator), rule, now, is_rate=True
            )
            den = self._sum_rate(
                rule.denominator.metric, self._matcher(rule.denominator), rule, now, is_rate=True
            )
            return [(dict(k), num[k] / den[k], None) for k in num.keys() & den.keys() if den[k] != 0]
        if rule.kind == "increase":
            assert rule.metric is not None
            total = self._sum_rate(rule.metric, self._matcher(rule), rule, now, is_rate=False)
            return [(dict(k), v, None) for k, v in total.items()]
        return self._quantile(rule, now)

    def _sum_rate(
        self, metric: str, match: _Matcher, rule: AlertRule, now: float, *, is_rate: bool
    ) -> dict[LabelKey, float]:
        """``sum by (rule.by) (rate|increase(metric{match}[window]))``."""
        start = now - rule.window_seconds
        out: dict[LabelKey, float] = {}
        for labels, points in self.history.range(metric, start, now):
            if not match(labels):
                continue
            delta = extrapolated_delta(
                points, start, now, is_counter=metric.endswith(_COUNTER_SUFFIXES), is_rate=is_rate
            )
            if delta is not None:
                key = _group(labels, rule.by)
                out[key] = out.get(key, 0.0) + delta
        return out

    def _quantile(self, rule: AlertRule, now: float) -> list[tuple[dict[str, str], float, float | None]]:
        """``histogram_quantile(q, sum by (le, by) (rate(metric_bucket{match}[window])))``."""
        assert rule.metric is not None and rule.quantile is not None
        match = self._matcher(rule)
        start = now - rule.window_seconds
        groups: dict[LabelKey, dict[float, float]] = {}
        for labels, points in self.history.range(f"{rule.metric}_bucket", start, now):
            if "le" not in labels or not match(labels):
                continue
            rate = extrapolated_delta(points, start, now, is_counter=True, is_rate=True)
            if rate is None:
                continue
            buckets = groups.setdefault(_group(labels, rule.by), {})
            upper = float(labels["le"])
            buckets[upper] = buckets.get(upper, 0.0) + rate
        out: list[tuple[dict[str, str], float, float | None]] = []
        for key, buckets in groups.items():
            q = bucket_quantile(rule.quantile, buckets.items())
            if q is not None:
                out.append((dict(key), q, None))
        return out

    def _compare(
        self, rule: AlertRule, current: Mapping[str, list[Sample]]
    ) -> list[tuple[dict[str, str], float, float | None]]:
        """``metric{match} OP on (by) other{other.match}``: one-to-one on the ``by`` labels."""
        assert rule.metric is not None and rule.other is not None
        left, right = self._matcher(rule), self._matcher(rule.other)
        others: dict[LabelKey, float | None] = {}
        for s in current.get(rule.other.metric, []):
            if right(s.labels):
                key = tuple(sorted((k, s.labels.get(k, "")) for k in rule.by))
                # Two right-hand series for one key is a PromQL error: match neither.
                others[key] = None if key in others else s.value
        out: list[tuple[dict[str, str], float, float | None]] = []
        for s in current.get(rule.metric, []):
            if not left(s.labels):
                continue
            key = tuple(sorted((k, s.labels.get(k, "")) for k in rule.by))
            other = others.get(key)
            if other is not None:
                out.append((dict(s.labels), s.value, other))
        return out


def _range_metrics(rule: AlertRule) -> list[str]:
    """The exposition names a rule reads through a range (they need a history)."""
    if rule.kind == "rate_ratio":
        assert rule.numerator is not None and rule.denominator is not None
        return [rule.numerator.metric, rule.denominator.metric]
    if rule.kind == "increase" and rule.metric:
        return [rule.metric]
    if rule.kind == "quantile" and rule.metric:
        return [f"{rule.metric}_bucket"]
    return []


def _silenced_until(silences: Sequence[SilenceRecord], record: AlertRecord) -> datetime | None:
    ends = [s.ends_at for s in silences if s.matches(record.rule, record.labels)]
    return max(ends) if ends else None


__all__ = [
    "AlertState",
    "RuleResult",
    "RulesEngine",
    "SampleHistory",
    "bucket_quantile",
    "extrapolated_delta",
    "fingerprint",
    "render",
]
