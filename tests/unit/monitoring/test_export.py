"""The Prometheus export: each rule kind's exact PromQL, SLO expansion and pipeline overrides, the
catalogue check, and the real promtool (``check rules`` and the generated ``test rules``)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from keeneye.domain import InvalidInput
from keeneye.metrics import Metrics
from keeneye.monitoring.alerts.export import ALERTMANAGER_FILE, RULE_TESTS_FILE, RULES_FILE, export_prometheus
from keeneye.monitoring.alerts.promql import (
    Scope,
    exposition_names,
    metric_names,
    prometheus_rules,
    render_expr,
    rule_file,
)
from keeneye.monitoring.alerts.promtool import go_number, rule_tests
from keeneye.monitoring.alerts.rules import AlertRule, load_rules
from keeneye.pipelines import RuleOverride
from keeneye.pipelines.spec import PipelineSpec, builtin_specs
from tests.unit.monitoring.promtool_support import require_tool, run_promtool


def _rule(**fields: Any) -> AlertRule:
    return AlertRule.model_validate({"name": "TestRule", **fields})


def _specs(**overrides: dict[str, RuleOverride]) -> list[PipelineSpec]:
    """The built-in specs; ``line_inspection={...}`` sets that pipeline's ``alerts:``."""
    out = []
    for _, spec in builtin_specs():
        alerts = overrides.get(spec.name.replace("-", "_"), {})
        out.append(spec.model_copy(update={"alerts": alerts}) if alerts else spec)
    return out


def _by_name(rules: list[AlertRule]) -> dict[str, AlertRule]:
    return {r.name: r for r in rules}


@pytest.fixture(scope="module")
def defaults() -> list[AlertRule]:
    return load_rules()


# --------------------------------------------------------------------------------------------------
# Rendering: one exact PromQL string per kind
# --------------------------------------------------------------------------------------------------

RENDERED = [
    (
        {
            "kind": "threshold",
            "metric": "keeneye_worker_utilization",
            "match": {"stat": "max"},
            "threshold": 0.8,
        },
        'keeneye_worker_utilization{stat="max"} > 0.8',
    ),
    (
        {"kind": "threshold", "metric": "keeneye_drift_alarm", "op": ">=", "threshold": 1},
        "keeneye_drift_alarm >= 1",
    ),
    (
        {
            "kind": "rate_ratio",
            "numerator": {"metric": "keeneye_requests_total", "match": {"status": "~5.."}},
            "denominator": {"metric": "keeneye_requests_total"},
            "window": "5m",
            "threshold": 0.01,
        },
        'sum by (pipeline) (rate(keeneye_requests_total{status=~"5.."}[5m])) / '
        "sum by (pipeline) (rate(keeneye_requests_total[5m])) > 0.01",
    ),
    (
        {
            "kind": "rate_ratio",
            "numerator": {"metric": "keeneye_cache_total", "match": {"result": "miss"}},
            "denominator": {"metric": "keeneye_cache_total"},
            "by": [],
            "window": "10m",
            "op": ">=",
            "threshold": 0.5,
        },
        'sum(rate(keeneye_cache_total{result="miss"}[10m])) / sum(rate(keeneye_cache_total[10m])) >= 0.5',
    ),
    (
        {
            "kind": "quantile",
            "metric": "keeneye_request_seconds",
            "quantile": 0.99,
            "window": "2m",
            "threshold": 1.5,
        },
        "histogram_quantile(0.99, sum by (le, pipeline) (rate(keeneye_request_seconds_bucket[2m]))) > 1.5",
    ),
    (
        {
            "kind": "quantile",
            "metric": "keeneye_stage_seconds",
            "match": {"stage": "infer"},
            "by": ["pipeline", "stage"],
            "quantile": 0.5,
            "threshold": 0.2,
        },
        "histogram_quantile(0.5, sum by (le, pipeline, stage) "
        '(rate(keeneye_stage_seconds_bucket{stage="infer"}[5m]))) > 0.2',
    ),
    (
        {"kind": "increase", "metric": "keeneye_dead_letters_total", "window": "10m", "threshold": 0},
        "sum by (pipeline) (increase(keeneye_dead_letters_total[10m])) > 0",
    ),
    (
        {
            "kind": "increase",
            "metric": "keeneye_rejections_total",
            "match": {"reason": "~bad_.*|too_large"},
            "by": ["pipeline", "reason"],
            "window": "1h",
            "threshold": 100,
        },
        "sum by (pipeline, reason) "
        '(increase(keeneye_rejections_total{reason=~"bad_.*|too_large"}[1h])) > 100',
    ),
    (
        {
            "kind": "compare",
            "metric": "keeneye_replicas",
            "other": {"metric": "keeneye_max_replicas"},
            "op": ">=",
        },
        "keeneye_replicas >= on (pipeline) keeneye_max_replicas",
    ),
    (
        {
            "kind": "compare",
            "metric": "keeneye_desired_replicas",
            "other": {"metric": "keeneye_min_replicas"},
            "by": ["pipeline", "namespace"],
            "op": "<",
        },
        "keeneye_desired_replicas < on (pipeline, namespace) keeneye_min_replicas",
    ),
]


@pytest.mark.parametrize(("fields", "expected"), RENDERED)
def test_each_kind_renders_the_documented_promql(fields: dict[str, Any], expected: str) -> None:
    assert render_expr(_rule(**fields)) == expected


def test_scopes_add_the_pipeline_matcher_after_the_rule_matchers() -> None:
    rule = _rule(kind="threshold", metric="keeneye_worker_utilization", match={"stat": "max"}, threshold=0.8)
    assert render_expr(rule, scope=Scope(only="line-inspection")) == (
        'keeneye_worker_utilization{stat="max",pipeline="line-inspection"} > 0.8'
    )
    assert render_expr(rule, scope=Scope(exclude=("crop-health", "line-inspection"))) == (
        'keeneye_worker_utilization{stat="max",pipeline!~"crop-health|line-inspection"} > 0.8'
    )
    ratio = _rule(
        kind="rate_ratio",
        numerator={"metric": "keeneye_observations_total", "match": {"status": "failed"}},
        denominator={"metric": "keeneye_observations_total"},
        threshold=0.01,
    )
    assert render_expr(ratio, threshold=0.05, scope=Scope(only="species-id")) == (
        'sum by (pipeline) (rate(keeneye_observations_total{status="failed",pipeline="species-id"}[5m])) / '
        'sum by (pipeline) (rate(keeneye_observations_total{pipeline="species-id"}[5m])) > 0.05'
    )


def test_regex_and_quote_matchers_are_escaped_as_promql_strings() -> None:
    rule = _rule(
        kind="threshold",
        metric="keeneye_model_info",
        match={"version": r"~\d+", "model": 'say "hi"'},
        op="==",
        threshold=1,
    )
    assert render_expr(rule) == r'keeneye_model_info{version=~"\\d+",model="say \"hi\""} == 1'


def test_a_rule_with_threshold_from_slo_has_no_threshold_of_its_own() -> None:
    rule = _rule(kind="quantile", metric="keeneye_request_seconds", quantile=0.95, threshold_from="slo_p95")
    with pytest.raises(ValueError, match="TestRule: no threshold"):
        render_expr(rule)


# --------------------------------------------------------------------------------------------------
# Expansion: SLOs and pipeline overrides
# --------------------------------------------------------------------------------------------------


def test_slo_rules_become_one_rule_per_pipeline_with_its_slo_in_seconds(defaults: list[AlertRule]) -> None:
    rendered = [r for r in prometheus_rules(defaults, _specs()) if r.alert == "ApiLatencyAboveSlo"]
    assert [(r.labels["pipeline"], r.expr) for r in rendered] == [
        (
            p,
            "histogram_quantile(0.95, sum by (le, pipeline) "
            f'(rate(keeneye_request_seconds_bucket{{pipeline="{p}"}}[5m]))) > {slo}',
        )
        for p, slo in (("crop-health", "0.49"), ("line-inspection", "0.348"), ("species-id", "0.5"))
    ]
    assert {r.for_ for r in rendered} == {"5m"}
    assert all(r.labels["severity"] == "warning" for r in rendered)


def test_an_override_gives_the_pipeline_its_own_rule_and_the_shared_one_leaves_it_out(
    defaults: list[AlertRule],
) -> None:
    specs = _specs(
        line_inspection={"WorkerLoadHigh": RuleOverride.model_validate({"for": "10m"})},
        species_id={"WorkerLoadHigh": RuleOverride(threshold=0.95)},
        crop_health={"WorkerLoadHigh": RuleOverride(enabled=False)},
    )
    rendered = [r.to_dict() for r in prometheus_rules(defaults, specs) if r.alert == "WorkerLoadHigh"]
    assert [(r["expr"], r["for"], r["labels"].get("pipeline")) for r in rendered] == [
        (
            'keeneye_worker_utilization{stat="max",pipeline!~"crop-health|line-inspection|species-id"} > 0.8',
            "5m",
            None,
        ),
        ('keeneye_worker_utilization{stat="max",pipeline="line-inspection"} > 0.8', "10m", "line-inspection"),
        ('keeneye_worker_utilization{stat="max",pipeline="species-id"} > 0.95', "5m", "species-id"),
    ]
    assert all(
        r["labels"]["group"] == "worker_load" and r["labels"]["severity"] == "warning" for r in rendered
    )


def test_an_override_of_an_slo_rule_changes_or_drops_that_pipeline_only(defaults: list[AlertRule]) -> None:
    specs = _specs(
        line_inspection={"StreamLatencyAboveSlo": RuleOverride(threshold=0.3)},
        crop_health={"StreamLatencyAboveSlo": RuleOverride(enabled=False)},
    )
    rendered = [r for r in prometheus_rules(defaults, specs) if r.alert == "StreamLatencyAboveSlo"]
    assert [(r.labels["pipeline"], r.expr.rsplit(" > ", 1)[1]) for r in rendered] == [
        ("line-inspection", "0.3"),
        ("species-id", "0.5"),
    ]


def test_an_override_that_changes_nothing_keeps_the_pipeline_in_the_shared_rule(
    defaults: list[AlertRule],
) -> None:
    specs = _specs(species_id={"DriftDetected": RuleOverride.model_validate({"threshold": 0, "for": "0s"})})
    rendered = [r for r in prometheus_rules(defaults, specs) if r.alert == "DriftDetected"]
    assert [r.expr for r in rendered] == ["keeneye_drift_alarm > 0"]


def test_exported_rule_file_keeps_labels_annotations_and_for(defaults: list[AlertRule]) -> None:
    doc = rule_file(defaults, _specs())
    [group] = doc["groups"]
    assert group["name"] == "keeneye"
    by_alert = {r["alert"]: r for r in group["rules"]}
    high = by_alert["WorkerLoadHigh"]
    assert high == {
        "alert": "WorkerLoadHigh",
        "expr": 'keeneye_worker_utilization{stat="max"} > 0.8',
        "for": "5m",
        "labels": {"severity": "warning", "group": "worker_load"},
        "annotations": _by_name(defaults)["WorkerLoadHigh"].annotations,
    }
    assert by_alert["WorkerLoadCritical"]["for"] == "15m"
    assert by_alert["WorkerLoadCritical"]["labels"]["severity"] == "critical"
    assert by_alert["DriftDetected"]["for"] == "0s"
    assert by_alert["ReplicasAtMax"]["expr"] == "keeneye_replicas >= on (pipeline) keeneye_max_replicas"


def test_every_metric_a_rule_or_its_tests_reads_is_in_the_catalogue(defaults: list[AlertRule]) -> None:
    catalogue = exposition_names(Metrics().registry)
    assert {"keeneye_requests_total", "keeneye_request_seconds_bucket", "keeneye_replicas"} <= catalogue
    read = {name for r in prometheus_rules(defaults, _specs()) for name in metric_names(r.expr)}
    assert read, "no metric parsed from the rules"
    assert read - catalogue == set()
    series = {
        s["series"].split("{", 1)[0]
        for t in rule_tests(defaults, _specs())["tests"]
        for s in t["input_series"]
    }
    assert series - catalogue == set()
    assert {r.metric for r in defaults if r.metric} - {n.removesuffix("_bucket") for n in read} == set()


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (pipeline) (rate(keeneye_requests_total{status=~"5.."}[5m]))', {"keeneye_requests_total"}),
        ("a >= on (pipeline) group_left b", {"a", "b"}),
        (
            'histogram_quantile(0.95, sum by (le) (rate(x_bucket{pipeline=~"$pipeline"}[$__rate_interval])))',
            {"x_bucket"},
        ),
        ("0.348 * group by (pipeline) (y_count) or vector(1e3)", {"y_count"}),
        ('label_replace(up, "dst", "$1", "src", "(.*)") unless on() absent(z)', {"up", "z"}),
    ],
)
def test_metric_names_skips_functions_labels_strings_and_variables(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


# --------------------------------------------------------------------------------------------------
# Generated promtool tests (content) and $value formatting
# --------------------------------------------------------------------------------------------------


def _group(tests: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in tests["tests"] if t["name"] == name)


def _checks(group: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {c["eval_time"]: c["exp_alerts"] for c in group["alert_rule_test"]}


def test_generated_tests_cover_the_briefed_timings(defaults: list[AlertRule]) -> None:
    tests = rule_tests(defaults, _specs())
    assert tests["evaluation_interval"] == "1m"
    assert tests["rule_files"] == [RULES_FILE]

    high = _group(tests, "WorkerLoadHigh")
    assert {s["values"] for s in high["input_series"]} == {"0.9x10"}
    checks = _checks(high)
    assert checks["4m"] == []
    # Every replica of every kind: a stream worker and an API process each fire, per pipeline.
    assert [(a["exp_labels"]["pipeline"], a["exp_labels"]["kind"]) for a in checks["5m"]] == [
        ("crop-health", "api"),
        ("crop-health", "stream"),
        ("line-inspection", "api"),
        ("line-inspection", "stream"),
        ("species-id", "api"),
        ("species-id", "stream"),
    ]
    first = checks["5m"][0]
    assert first["exp_labels"] == {
        "stat": "max",
        "kind": "api",
        "pipeline": "crop-health",
        "severity": "warning",
        "group": "worker_load",
    }
    summary = first["exp_annotations"]["summary"]
    assert summary == "crop-health: a replica (api) is over 80% busy for 5 minutes"
    assert first["exp_annotations"]["description"].startswith("Busiest api replica at 0.9.")

    critical = _checks(_group(tests, "WorkerLoadCritical"))
    assert critical["14m"] == [] and len(critical["15m"]) == 6

    latency = _checks(_group(tests, "ApiLatencyAboveSlo"))  # p95 = 0.4 s everywhere: above 0.348 only
    assert latency["5m"] == []
    assert [(a["exp_labels"], a["exp_annotations"]["description"]) for a in latency["6m"]] == [
        ({"pipeline": "line-inspection", "severity": "warning"}, "p95 is 0.4 s.")
    ]

    drift = _checks(_group(tests, "DriftDetected"))  # alarm 0 at t=0, 1 from 1m, for: 0s
    assert drift["0m"] == [] and len(drift["1m"]) == 3

    at_max = _checks(_group(tests, "ReplicasAtMax"))  # the last pipeline stays at its minimum
    assert at_max["9m"] == []
    assert [a["exp_labels"]["pipeline"] for a in at_max["10m"]] == ["crop-health", "line-inspection"]


def test_generated_tests_skip_rules_keeneye_does_not_ship() -> None:
    own = _rule(kind="threshold", metric="keeneye_queue_lag", threshold=1000, **{"for": "5m"})
    assert rule_tests([own], _specs())["tests"] == []


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.9, "0.9"),
        (1.0, "1"),
        (6.0, "6"),
        (0.4, "0.4"),
        (1e6, "1e+06"),
        (123456.0, "123456"),
        (1234567.0, "1.234567e+06"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (-0.5, "-0.5"),
        (0.1 + 0.2, "0.30000000000000004"),
        (float("inf"), "+Inf"),
    ],
)
def test_go_number_prints_floats_as_prometheus_templates_do(value: float, text: str) -> None:
    assert go_number(value) == text


def test_go_number_matches_the_real_prometheus_template_engine(tmp_path: Path) -> None:
    values = [0.9, 1.0, 1e6, 1234567.0, 123456.0, 0.0001, 0.00001, -0.5, 0.1 + 0.2, 12345.678, 1.5e-7]
    (tmp_path / "r.yaml").write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "g",
                        "rules": [{"alert": "V", "expr": "v", "annotations": {"d": "{{ $value }}"}}],
                    }
                ]
            }
        )
    )
    test = {
        "rule_files": ["r.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": f'v{{i="{i}"}}', "values": repr(v)} for i, v in enumerate(values)
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "0m",
                        "alertname": "V",
                        "exp_alerts": [
                            {"exp_labels": {"i": str(i)}, "exp_annotations": {"d": go_number(v)}}
                            for i, v in enumerate(values)
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(test))
    result = run_promtool("test", "rules", tmp_path / "t.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------------
# The export on disk, checked by the real promtool
# --------------------------------------------------------------------------------------------------


def test_export_writes_three_files_and_is_deterministic(defaults: list[AlertRule], tmp_path: Path) -> None:
    first = export_prometheus(defaults, _specs(), tmp_path / "a")
    second = export_prometheus(defaults, list(reversed(_specs())), tmp_path / "b")
    assert [p.name for p in first] == [RULES_FILE, RULE_TESTS_FILE, ALERTMANAGER_FILE]
    assert all(p.is_file() for p in first)
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert yaml.safe_load(first[0].read_text()) == rule_file(defaults, _specs())


def test_export_into_an_unwritable_place_is_one_clear_error(
    defaults: list[AlertRule], tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(InvalidInput) as caught:
        export_prometheus(defaults, _specs(), blocker / "prometheus")
    assert caught.value.reason == "bad_export_dir"
    assert str(caught.value).startswith(f"{blocker / 'prometheus'}: cannot write keeneye-rules.yaml, ")


def test_promtool_check_rules_accepts_the_export(defaults: list[AlertRule], tmp_path: Path) -> None:
    paths = export_prometheus(defaults, _specs(), tmp_path)
    result = run_promtool("check", "rules", paths[0])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(prometheus_rules(defaults, _specs()))} rules found" in result.stdout


def test_promtool_runs_the_generated_tests_green(defaults: list[AlertRule], tmp_path: Path) -> None:
    export_prometheus(defaults, _specs(), tmp_path)
    result = run_promtool("test", "rules", tmp_path / RULE_TESTS_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_proves_overrides_with_the_generated_tests(
    defaults: list[AlertRule], tmp_path: Path
) -> None:
    """The generated tests follow the overrides: line-inspection's WorkerLoadHigh fires at 10m, not
    5m; species-id's never (0.9 < 0.95); crop-health has no drift alert; SLO override honoured."""
    specs = _specs(
        line_inspection={"WorkerLoadHigh": RuleOverride.model_validate({"for": "10m"})},
        species_id={
            "WorkerLoadHigh": RuleOverride(threshold=0.95),
            "ReplicasAtMax": RuleOverride(enabled=False),
        },
        crop_health={
            "DriftDetected": RuleOverride(enabled=False),
            "ApiLatencyAboveSlo": RuleOverride(threshold=0.3),
        },
    )
    paths = export_prometheus(defaults, specs, tmp_path)
    check = run_promtool("check", "rules", paths[0])
    assert check.returncode == 0, check.stdout + check.stderr
    high = _checks(_group(yaml.safe_load(paths[1].read_text()), "WorkerLoadHigh"))
    assert [a["exp_labels"]["pipeline"] for a in high["5m"]] == ["crop-health"] * 2  # api and stream
    assert high["9m"] == high["5m"]
    assert [a["exp_labels"]["pipeline"] for a in high["10m"]] == ["crop-health"] * 2 + ["line-inspection"] * 2
    latency = _checks(_group(yaml.safe_load(paths[1].read_text()), "ApiLatencyAboveSlo"))
    # The lowest SLO is now 0.3, so every pipeline's p95 is 0.348: not above line-inspection's 0.348.
    assert [a["exp_labels"]["pipeline"] for a in latency["6m"]] == ["crop-health"]
    result = run_promtool("test", "rules", paths[1])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("broken", "fix"),
    [
        ("for: 5m", "for: 4m"),  # WorkerLoadHigh would fire a minute early
        ("> 0.348", "> 0.5"),  # line-inspection's SLO lost
        ("keeneye_drift_alarm > 0", "keeneye_drift_alarm > 1"),
    ],
)
def test_the_generated_tests_catch_a_wrong_rule_file(
    defaults: list[AlertRule], tmp_path: Path, broken: str, fix: str
) -> None:
    paths = export_prometheus(defaults, _specs(), tmp_path)
    text = paths[0].read_text()
    assert broken in text
    paths[0].write_text(text.replace(broken, fix, 1))
    result = run_promtool("test", "rules", paths[1])
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


# --------------------------------------------------------------------------------------------------
# Alertmanager example
# --------------------------------------------------------------------------------------------------


def test_alertmanager_example_routes_by_severity_and_inhibits_warnings(
    defaults: list[AlertRule], tmp_path: Path
) -> None:
    path = export_prometheus(defaults, _specs(), tmp_path)[2]
    config = yaml.safe_load(path.read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    route = config["route"]
    assert route["receiver"] in receivers
    routes = {tuple(r["matchers"]): r for r in route["routes"]}
    assert routes[('severity="critical"',)]["receiver"] == "keeneye-oncall"
    assert routes[('severity=~"warning|info"',)]["receiver"] == "keeneye-team"
    assert all(r["receiver"] in receivers for r in route["routes"])
    assert routes[('severity="critical"',)]["repeat_interval"] == "1h"
    assert route["repeat_interval"] == "4h"
    [inhibit] = config["inhibit_rules"]
    assert inhibit == {
        "source_matchers": ['severity="critical"', 'group=~".+"'],
        "target_matchers": ['severity="warning"'],
        "equal": ["group", "pipeline", "kind"],
    }
    urls = [c["url"] for r in receivers.values() for c in r["webhook_configs"]]
    assert urls and all(re.match(r"https://[a-z]+\.example\.invalid/", u) for u in urls)
    assert "EXAMPLE" in path.read_text()
    # The escalation the example describes exists: the same condition, critical, with a longer `for`.
    rules = _by_name(defaults)
    high, critical = rules["WorkerLoadHigh"], rules["WorkerLoadCritical"]
    assert render_expr(high) == render_expr(critical)
    assert critical.for_seconds > high.for_seconds and critical.severity == "critical"
    assert high.labels["group"] == critical.labels["group"]


def test_the_shipped_alertmanager_example_is_the_exported_one(
    defaults: list[AlertRule], tmp_path: Path
) -> None:
    shipped = Path(__file__).resolve().parents[3] / "deploy" / "alertmanager" / ALERTMANAGER_FILE
    exported = export_prometheus(defaults, _specs(), tmp_path)[2]
    assert shipped.read_text(encoding="utf-8") == exported.read_text(encoding="utf-8")


def test_amtool_accepts_the_alertmanager_example_and_routes_by_severity(
    defaults: list[AlertRule], tmp_path: Path
) -> None:
    amtool = require_tool("amtool", "prometheus-alertmanager")
    path = export_prometheus(defaults, _specs(), tmp_path)[2]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([amtool, *args], capture_output=True, text=True, timeout=60, check=False)

    check = run("check-config", str(path))
    assert check.returncode == 0, check.stdout + check.stderr
    for severity, receiver in (
        ("critical", "keeneye-oncall"),
        ("warning", "keeneye-team"),
        ("info", "keeneye-team"),
    ):
        routed = run(
            "config",
            "routes",
            "test",
            f"--config.file={path}",
            f"--verify.receivers={receiver}",
            f"severity={severity}",
            "alertname=WorkerLoadHigh",
            "pipeline=line-inspection",
        )
        assert routed.returncode == 0, f"{severity}: {routed.stdout}{routed.stderr}"


# --------------------------------------------------------------------------------------------------
# docs/prometheus.md: the configuration it shows is checked by promtool
# --------------------------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[3] / "docs" / "prometheus.md"


def _doc_block(marker: str) -> str:
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(rf"<!-- {re.escape(marker)}:[^>]*-->\n```yaml\n(.*?)```", text, re.S)
    assert match is not None, f"docs/prometheus.md has no yaml block after the {marker} marker"
    return match.group(1)


def test_the_documented_prometheus_config_and_cluster_rules_pass_promtool(
    defaults: list[AlertRule], tmp_path: Path
) -> None:
    export_prometheus(defaults, _specs(), tmp_path)
    (tmp_path / "keeneye-cluster.yaml").write_text(_doc_block("keeneye-cluster.yaml"))
    config = _doc_block("prometheus.yml")
    # Debian builds promtool without Kubernetes service discovery; everything else is checked as is.
    assert config.count("kubernetes_sd_configs: [{role: pod}]") == 2
    config = config.replace(
        "kubernetes_sd_configs: [{role: pod}]", 'static_configs: [{targets: ["pod:8000"]}]'
    )
    (tmp_path / "prometheus.yml").write_text(config)
    result = run_promtool("check", "config", tmp_path / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout
    jobs = yaml.safe_load(config)["scrape_configs"]
    assert [j["job_name"] for j in jobs] == ["keeneye-api", "keeneye-worker"]
    assert all(r.get("target_label") != "pipeline" for j in jobs for r in j["relabel_configs"])
