"""``keeneye alerts …`` and ``keeneye scheduler`` through the real entry point, on a real SQLite file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keeneye.cli import main
from keeneye.cli._common import console, err_console
from keeneye.monitoring.alerts.store import AlertStore
from keeneye.settings import Settings, get_settings
from keeneye.store import AlertRecord, open_results_db
from tests.services import free_port

KEENEYE = [sys.executable, "-m", "keeneye"]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class Cli:
    """``keeneye …`` in this process through :func:`keeneye.cli.main` (exit codes and the one-line
    errors included); a subprocess per command would cost seconds each on a busy machine."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], home: Path
    ) -> None:
        self.monkeypatch, self.capsys, self.home = monkeypatch, capsys, home
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
        monkeypatch.setattr(console, "width", 200)
        monkeypatch.setattr(err_console, "width", 200)

    def run(self, args: list[str], **env: str) -> Result:
        with self.monkeypatch.context() as m:
            m.setenv("KEENEYE_HOME", str(self.home))
            for key, value in env.items():
                m.setenv(key, value)
            m.setattr(sys, "argv", ["keeneye", *args])
            get_settings.cache_clear()
            self.capsys.readouterr()
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            finally:
                get_settings.cache_clear()
        out = self.capsys.readouterr()
        return Result(code, out.out, out.err)

    def ok(self, args: list[str], **env: str) -> str:
        out = self.run(args, **env)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    def refused(self, args: list[str], **env: str) -> str:
        """The command exits 2 with exactly one line on stderr (no traceback); returns that line."""
        out = self.run(args, **env)
        assert out.returncode == 2, out.stdout + out.stderr
        lines = [ln for ln in out.stderr.splitlines() if ln.strip() and " WARNING " not in ln]
        assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
        return lines[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], home: Path) -> Cli:
    return Cli(monkeypatch, capsys, home)


def seed(home: Path, rule: str = "WorkerLoadHigh", state: str = "firing", **labels: str) -> AlertRecord:
    store = AlertStore(open_results_db(Settings(home=home)))
    now = datetime.now(UTC) - timedelta(minutes=7)
    record = store.create(
        rule=rule, fingerprint=f"{rule}-{state}-{sorted(labels.items())}", severity="warning", state=state,
        labels=labels, annotations={"summary": "busy"}, value=0.93, now=now,
    )  # fmt: skip
    if state == "resolved":
        record = store.update(record.id, now, resolved_at=now) or record
    return record


def test_list_shows_active_alerts_and_all_shows_history(cli: Cli, home: Path) -> None:
    assert "no active alerts" in cli.ok(["alerts", "list"])
    firing = seed(home, pipeline="species-id", stat="max")
    old = seed(home, "DriftDetected", "resolved", pipeline="crop-health")
    listed = json.loads(cli.ok(["alerts", "list", "--json"]))
    assert [a["id"] for a in listed] == [firing.id]
    assert listed[0]["labels"] == {"pipeline": "species-id", "stat": "max"} and listed[0]["value"] == 0.93
    everything = json.loads(cli.ok(["alerts", "list", "--all", "--json"]))
    assert [a["id"] for a in everything] == [old.id, firing.id]  # newest first
    table = cli.ok(["alerts", "list"])
    row = next(ln for ln in table.splitlines() if "WorkerLoadHigh" in ln)
    for cell in (str(firing.id), "warning", "firing", "pipeline=species-id, stat=max", "(7m ago)", "0.93"):
        assert cell in row, row


def test_ack_records_who_and_refuses_unknown_or_resolved_alerts(cli: Cli, home: Path) -> None:
    firing = seed(home, pipeline="species-id")
    resolved = seed(home, "DriftDetected", "resolved", pipeline="species-id")
    assert f"alert {firing.id} (WorkerLoadHigh) acknowledged by alice" in cli.ok(
        ["alerts", "ack", str(firing.id), "--by", "alice"]
    )
    cli.ok(["alerts", "ack", str(firing.id), "--by", "bob"])  # idempotent: alice stays
    [listed] = json.loads(cli.ok(["alerts", "list", "--json"]))
    assert listed["acked_by"] == "alice" and listed["acked_at"] is not None
    assert (
        cli.refused(["alerts", "ack", "999"]) == "error: alert 999 does not exist — see `keeneye alerts list`"
    )
    line = cli.refused(["alerts", "ack", str(resolved.id)])
    assert f"alert {resolved.id} (DriftDetected) is already resolved" in line


def test_silence_list_and_unsilence(cli: Cli, home: Path) -> None:
    muted = seed(home, "DriftDetected", pipeline="species-id")
    other = seed(home, "DriftDetected", pipeline="crop-health")
    out = cli.ok(
        ["alerts", "silence", "--rule", "DriftDetected", "--label", "pipeline=species-id", "--for", "2h",
         "--reason", "camera swap", "--by", "alice"]
    )  # fmt: skip
    assert "rule=DriftDetected pipeline=species-id until" in out and "(camera swap)" in out
    [silence] = json.loads(cli.ok(["alerts", "silences", "--json"]))
    assert (silence["rule"], silence["matchers"], silence["reason"], silence["created_by"]) == (
        "DriftDetected", {"pipeline": "species-id"}, "camera swap", "alice",
    )  # fmt: skip
    span = datetime.fromisoformat(silence["ends_at"]) - datetime.fromisoformat(silence["starts_at"])
    assert span == timedelta(hours=2)
    assert "camera swap" in cli.ok(["alerts", "silences"])
    listed = {a["id"]: a["silenced"] for a in json.loads(cli.ok(["alerts", "list", "--json"]))}
    assert listed == {muted.id: True, other.id: False}
    assert "firing (silenced)" in cli.ok(["alerts", "list"])
    cli.ok(["alerts", "unsilence", str(silence["id"])])
    assert json.loads(cli.ok(["alerts", "silences", "--json"])) == []
    assert "(silenced)" not in cli.ok(["alerts", "list"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rule", "Nope"], "error: unknown rule 'Nope'; known: ApiErrorRateHigh, ApiLatencyAboveSlo"),
        ([], "error: a silence needs a rule or at least one label matcher"),
        (["--label", "pipeline"], "error: --label 'pipeline' is not key=value"),
        (["--rule", "DriftDetected", "--for", "2 hours"], "error: duration: '2 hours' is not a duration"),
    ],
)
def test_silence_refuses_bad_input_with_one_line(cli: Cli, home: Path, args: list[str], message: str) -> None:
    full = ["alerts", "silence", "--reason", "x", *args]
    if "--for" not in args:
        full += ["--for", "1h"]
    assert cli.refused(full).startswith(message)


def test_check_counts_rules_and_names_the_bad_file(cli: Cli, home: Path, tmp_path: Path) -> None:
    assert "OK: 13 rules (13 packaged defaults, 0 added)" in cli.ok(["alerts", "check"])
    extra = tmp_path / "site.yaml"
    extra.write_text(
        textwrap.dedent(
            """
            rules:
              - name: QueueLagHigh
                kind: threshold
                metric: keeneye_queue_lag
                threshold: 1000
                for: 10m
              - name: WorkerLoadHigh   # replaces the packaged rule of that name
                kind: threshold
                metric: keeneye_worker_utilization
                threshold: 0.9
            """
        )
    )
    assert "OK: 14 rules (13 packaged defaults, 1 added)" in cli.ok(["alerts", "check", str(extra)])
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "rules:\n  - name: Broken\n    kind: quantile\n"
        "    metric: keeneye_request_seconds\n    threshold: 1\n"
    )
    line = cli.refused(["alerts", "check", str(bad)])
    assert line == f"error: {bad}: rules.0: a quantile rule needs quantile (e.g. 0.95)"
    assert "no such rule file" in cli.refused(["alerts", "check", str(tmp_path / "missing.yaml")])


def test_check_warns_about_overrides_of_unknown_rules(cli: Cli, home: Path, tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "yard.yaml").write_text(
        "name: yard\ntask: classify\nalerts:\n  WorkerLoadHihg: {enabled: false}\n"
    )
    out = cli.run(["alerts", "check"], KEENEYE_PIPELINES__DIRS=json.dumps([str(specs)]))
    assert out.returncode == 0
    assert "warning: pipeline yard: alerts.WorkerLoadHihg overrides no known rule" in out.stderr


def _write_multiprocess_metrics(folder: Path, code: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    script = "from keeneye.metrics import Metrics\nm = Metrics()\n" + code
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)


def test_evaluate_once_reads_the_shared_metrics_and_persists_alerts(
    cli: Cli, home: Path, tmp_path: Path
) -> None:
    prom = tmp_path / "prom"
    _write_multiprocess_metrics(prom, "m.drift_alarm.labels('species-id').set(1)\n")
    states = json.loads(
        cli.ok(["alerts", "evaluate", "--once", "--json"], PROMETHEUS_MULTIPROC_DIR=str(prom))
    )
    [drift] = [s for s in states if s["rule"] == "DriftDetected"]
    assert drift["state"] == "firing" and drift["labels"]["pipeline"] == "species-id"
    assert drift["annotations"]["summary"].startswith("species-id: input data drifted")
    listed = json.loads(cli.ok(["alerts", "list", "--json"]))
    assert [a["id"] for a in listed] == [drift["id"]]


def test_evaluate_once_without_metrics_is_one_clear_line(cli: Cli, home: Path) -> None:
    line = cli.refused(["alerts", "evaluate", "--once"], KEENEYE_SERVING__PORT=str(free_port()))
    assert line.startswith("error: cannot read metrics: http://127.0.0.1:")
    assert "start the API" in line


def test_export_writes_prometheus_rule_files(cli: Cli, home: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "prom-rules"
    out = cli.ok(["alerts", "export", "--prometheus", str(out_dir)])
    files = sorted(out_dir.rglob("*.y*ml"))
    assert files and "wrote" in out
    assert "WorkerLoadHigh" in "".join(f.read_text() for f in files)


@pytest.mark.slow
def test_scheduler_evaluates_until_sigterm_and_keeps_a_heartbeat(home: Path, tmp_path: Path) -> None:
    prom = tmp_path / "prom"
    _write_multiprocess_metrics(prom, "m.drift_alarm.labels('species-id').set(1)\n")
    env = {
        **os.environ,
        "KEENEYE_HOME": str(home),
        "PROMETHEUS_MULTIPROC_DIR": str(prom),
        "KEENEYE_ALERTING__INTERVAL_SECONDS": "0.3",
        "KEENEYE_STREAM__STATUS_INTERVAL_SECONDS": "0.3",
    }
    proc = subprocess.Popen([*KEENEYE, "scheduler"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    status = home / "run" / "scheduler.json"
    try:
        rounds = 0
        deadline = time.monotonic() + 90
        while rounds < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            try:
                rounds = json.loads(status.read_text()).get("rounds", 0)
            except (OSError, ValueError):
                continue
        beat = json.loads(status.read_text())
        assert beat["role"] == "scheduler" and beat["pid"] == proc.pid and beat["rounds"] >= 2
        assert beat["alerts_firing"] == 1
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    assert "scheduler stopped after" in err.decode()
    assert not status.exists()  # a stopped scheduler leaves no stale heartbeat
    store = AlertStore(open_results_db(Settings(home=home)))
    assert [a.rule for a in store.list_alerts()] == ["DriftDetected"]


def test_every_alerts_command_explains_itself(cli: Cli) -> None:
    out = cli.ok(["alerts", "--help"])
    rows = [ln.strip("│ ") for ln in out.splitlines()]
    for command in ("list", "ack", "silence", "silences", "unsilence", "check", "evaluate", "export"):
        line = next((r for r in rows if r.startswith(f"{command}  ")), "")
        assert len(line.removeprefix(command).strip()) > 15, f"{command} has no description: {line!r}"
    assert "alert rules and online quality" in cli.ok(["scheduler", "--help"])


def test_test_channel_sends_to_a_real_webhook(cli: Cli) -> None:
    from tests.unit.monitoring.alert_support import webhook_receiver

    with webhook_receiver() as hook:
        env = {
            "KEENEYE_ALERTING__CHANNELS": json.dumps([{"name": "hook", "kind": "webhook", "url": hook.url}]),
            "KEENEYE_ALERTING__ROUTE": '["hook"]',
        }
        assert "sent a test notification to 'hook'" in cli.ok(["alerts", "test-channel", "hook"], **env)
        line = cli.refused(["alerts", "test-channel", "pager"], **env)
    assert line == "error: no channel 'pager'; configured: hook"
    [body] = hook.bodies
    assert body["alerts"][0]["labels"]["alertname"] == "KeeneyeTestNotification"
