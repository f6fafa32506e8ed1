"""``keeneye alerts …``: see what fires, acknowledge, silence, check and export the alert rules."""

from __future__ import annotations

import getpass
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from keeneye.cli._common import PANEL_MONITOR, console, err_console, print_json, settings
from keeneye.domain import InvalidInput, JsonValue

if TYPE_CHECKING:
    from keeneye.monitoring.alerts.engine import AlertState
    from keeneye.monitoring.alerts.rules import AlertRule
    from keeneye.monitoring.alerts.store import AlertStore
    from keeneye.settings import Settings
    from keeneye.store import AlertRecord

alerts_app = typer.Typer(
    help="Alerts from the built-in rules engine: list, acknowledge, silence, check and export the rules.",
    no_args_is_help=True,
)

JSON_OPT = typer.Option(False, "--json/--no-json", help="Print JSON instead of a table.")
BY_OPT = typer.Option(None, "--by", help="Who does it (recorded; default: cli:<your user name>).")


def _actor(by: str | None) -> str:
    if by:
        return by
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in some containers
        return "cli"


def _store(s: Settings) -> AlertStore:
    from keeneye.monitoring.alerts.store import AlertStore
    from keeneye.store import open_results_db

    return AlertStore(open_results_db(s))


def _rules(s: Settings, files: list[Path] | None = None) -> list[AlertRule]:
    from keeneye.monitoring.alerts.rules import load_rules

    return load_rules(files if files else s.alerting.rules)


def _now() -> datetime:
    return datetime.now(UTC)


def _ago(ts: datetime | None, now: datetime) -> str:
    if ts is None:
        return "-"
    seconds = max(0, int((now - ts).total_seconds()))
    if seconds < 120:
        span = f"{seconds}s"
    elif seconds < 7200:
        span = f"{seconds // 60}m"
    elif seconds < 172800:
        span = f"{seconds // 3600}h"
    else:
        span = f"{seconds // 86400}d"
    return f"{ts:%Y-%m-%d %H:%M}Z ({span} ago)"


def _labels(labels: Mapping[str, JsonValue]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def _since(a: AlertRecord | AlertState) -> datetime | None:
    if a.state == "resolved":
        return a.resolved_at
    return a.fired_at if a.state == "firing" else a.started_at


def _alert_table(
    alerts: list[AlertRecord] | list[AlertState], title: str, silenced_ids: set[int] | None = None
) -> Table:
    now = _now()
    table = Table(title=title, title_justify="left")
    for col in ("id", "rule", "severity", "state", "labels", "since", "acked", "value"):
        table.add_column(col, overflow="fold")
    colors = {"critical": "red", "warning": "yellow", "info": "blue"}
    for a in alerts:
        acked = a.acked_by or "-"
        silenced = getattr(a, "silenced", False) or a.id in (silenced_ids or set())
        state = a.state + (" (silenced)" if silenced else "")
        color = colors.get(a.severity, "white")
        table.add_row(
            str(a.id),
            a.rule,
            f"[{color}]{a.severity}[/]",
            state,
            _labels(a.labels),
            _ago(_since(a), now),
            acked,
            "-" if a.value is None else f"{a.value:.6g}",
        )
    return table


def list_alerts(
    all_: bool = typer.Option(
        False, "--all/--no-all", help="Also resolved alerts (newest first), not only active ones."
    ),
    limit: int = typer.Option(200, "--limit", min=1, max=10_000, help="At most this many alerts."),
    json_out: bool = JSON_OPT,
) -> None:
    """Active alerts (pending or firing): id, rule, severity, state, labels, since when, who acked."""
    from keeneye.monitoring.alerts.store import alert_json

    store = _store(settings())
    alerts = store.list_alerts(active_only=not all_, limit=limit)
    silenced = store.silenced_ids(alerts, _now())
    if json_out:
        print_json([{**alert_json(a), "silenced": a.id in silenced} for a in alerts])
        return
    if not alerts:
        console.print("no alerts" if all_ else "no active alerts (use --all for the history)")
        return
    console.print(_alert_table(alerts, "alerts" if all_ else "active alerts", silenced))


def ack(
    alert_id: int = typer.Argument(..., help="The alert id (see `keeneye alerts list`)."),
    by: str | None = BY_OPT,
    json_out: bool = JSON_OPT,
) -> None:
    """Acknowledge an alert: someone is on it, so a critical alert is not escalated further."""
    from keeneye.monitoring.alerts.store import alert_json

    record = _store(settings()).ack(alert_id, _actor(by), _now())
    if json_out:
        print_json(alert_json(record))
        return
    console.print(f"alert {record.id} ({record.rule}) acknowledged by {record.acked_by}")


def _parse_labels(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(
                "bad_silence", f"--label {pair!r} is not key=value", fix="e.g. --label pipeline=species-id"
            )
        out[key.strip()] = value.strip()
    return out


def silence_alerts(
    rule: str | None = typer.Option(None, "--rule", help="Silence this rule (e.g. WorkerLoadHigh)."),
    label: list[str] = typer.Option(
        [], "--label", help="Only alerts with this label value, key=value (repeatable)."
    ),
    duration: str = typer.Option(..., "--for", help="How long, e.g. 30m, 2h, 1d."),
    reason: str = typer.Option(..., "--reason", help="Why (shown to everyone who lists silences)."),
    by: str | None = BY_OPT,
    json_out: bool = JSON_OPT,
) -> None:
    """Mute notifications of matching alerts for a while (state is still tracked and listed).

    Give --rule, one or more --label key=value, or both: an alert matches when it is of that rule
    and has every label.
    """
    s = settings()
    record = _store(s).silence(
        [r.name for r in _rules(s)], rule=rule, matchers=_parse_labels(label), duration=duration,
        reason=reason, by=_actor(by), now=_now(),
    )  # fmt: skip
    if json_out:
        print_json(record.to_json())
        return
    what = " ".join([f"rule={rule}"] * bool(rule) + [f"{k}={v}" for k, v in record.matchers.items()])
    console.print(f"silence {record.id}: {what} until {record.ends_at:%Y-%m-%d %H:%M}Z ({reason})")


def silences(json_out: bool = JSON_OPT) -> None:
    """Silences in force now: what they match, until when, who and why."""
    rows = _store(settings()).active_silences(_now())
    if json_out:
        print_json([r.to_json() for r in rows])
        return
    if not rows:
        console.print("no active silences")
        return
    table = Table(title="active silences", title_justify="left")
    for col in ("id", "rule", "labels", "until", "by", "reason"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            str(r.id), r.rule or "(any)", _labels(dict(r.matchers)), f"{r.ends_at:%Y-%m-%d %H:%M}Z",
            r.created_by, r.reason,
        )  # fmt: skip
    console.print(table)


def unsilence(
    silence_id: int = typer.Argument(..., help="The silence id (see `keeneye alerts silences`)."),
) -> None:
    """End a silence now."""
    record = _store(settings()).expire_silence(silence_id, _now())
    console.print(f"silence {record.id} ended")


def check(
    files: list[Path] | None = typer.Argument(
        None, help="Rule files or folders to check (default: the configured alerting.rules)."
    ),
    json_out: bool = JSON_OPT,
) -> None:
    """Validate rule files (with the packaged defaults) and the pipelines' alert overrides.

    Exits 2 with a one-line error naming the file, the rule and the field when a file is wrong.
    """
    from keeneye.monitoring.alerts.rules import default_rules_text, parse_rules
    from keeneye.pipelines import PipelineCatalog

    s = settings()
    rules = _rules(s, files)
    defaults = {r.name for r in parse_rules(default_rules_text(), source="keeneye defaults")}
    names = {r.name for r in rules}
    problems = [
        f"pipeline {spec.name}: alerts.{name} overrides no known rule"
        for spec in PipelineCatalog(s).specs()
        for name in spec.alerts
        if name not in names
    ]
    if json_out:
        print_json({"rules": len(rules), "added": sorted(names - defaults), "warnings": problems})
        return
    for p in problems:
        err_console.print(f"[yellow]warning:[/] {p}", highlight=False)
    extra = len(names - defaults)
    console.print(f"OK: {len(rules)} rules ({len(rules) - extra} packaged defaults, {extra} added)")


def evaluate(
    once: bool = typer.Option(
        False, "--once/--no-once", help="One evaluation, then exit (for cron and scripts)."
    ),
    json_out: bool = JSON_OPT,
) -> None:
    """Evaluate the rules against the running system's metrics and notify, like the scheduler does.

    Reads PROMETHEUS_MULTIPROC_DIR when set (keeneye up), else GET /metrics of the API. Rules over a
    window (rates, quantiles, increases) need two evaluations, so --once decides the instant rules;
    alert state is kept in the database, so repeated --once runs honour `for` durations.
    """
    from keeneye.metrics import Metrics
    from keeneye.monitoring.alerts.engine import RulesEngine
    from keeneye.monitoring.alerts.store import alert_json

    s = settings()
    engine = RulesEngine.from_settings(s, metrics=Metrics())
    while True:
        states = engine.evaluate()
        if json_out:
            print_json([alert_json(st) for st in states])
        elif states:
            console.print(_alert_table(states, f"alerts after evaluating {len(engine.rules)} rules"))
        else:
            console.print(f"{len(engine.rules)} rules evaluated: nothing pending or firing")
        if once:
            return
        time.sleep(s.alerting.interval_seconds)


def export(
    prometheus: Path = typer.Option(
        ..., "--prometheus", file_okay=False, help="Folder to write Prometheus rule files into."
    ),
) -> None:
    """Render the same rules (with the pipelines' SLOs and overrides) as Prometheus alerting rules."""
    from keeneye.monitoring.alerts.export import export_prometheus
    from keeneye.pipelines import PipelineCatalog

    s = settings()
    written = export_prometheus(_rules(s), PipelineCatalog(s).specs(), prometheus)
    for path in written:
        console.print(f"wrote {path}")
    console.print(
        f"{len(written)} file(s); load them with Prometheus' rule_files (check: promtool check rules)"
    )


def test_channel(
    name: str = typer.Argument(..., help="A channel name from alerting.channels (e.g. log)."),
) -> None:
    """Send a test notification to one channel, to check its URL, SMTP server and recipients."""
    from keeneye.monitoring.alerts.channels import Notification, build_channels

    s = settings()
    channels = build_channels(s.alerting)
    if name not in channels:
        raise InvalidInput(
            "unknown_channel", f"no channel {name!r}; configured: {', '.join(sorted(channels))}", status=400
        )
    note = Notification(
        alert_id=0,
        rule="KeeneyeTestNotification",
        severity="info",
        kind="firing",
        labels={"channel": name},
        annotations={"summary": "a test notification from `keeneye alerts test-channel`"},
        value=None,
        starts_at=_now(),
        ends_at=None,
        level=0,
        fingerprint="test",
    )
    try:
        channels[name].send(note)
    except Exception as exc:
        raise InvalidInput("channel_failed", f"channel {name!r} failed: {exc}", status=502) from exc
    console.print(f"sent a test notification to {name!r}")


def register(app: typer.Typer) -> None:
    alerts_app.command("list")(list_alerts)
    alerts_app.command("ack")(ack)
    alerts_app.command("silence")(silence_alerts)
    alerts_app.command("silences")(silences)
    alerts_app.command("unsilence")(unsilence)
    alerts_app.command("check")(check)
    alerts_app.command("evaluate")(evaluate)
    alerts_app.command("export")(export)
    alerts_app.command("test-channel")(test_channel)
    app.add_typer(alerts_app, name="alerts", rich_help_panel=PANEL_MONITOR)


__all__ = ["register"]
