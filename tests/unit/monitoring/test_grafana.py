"""The Grafana dashboards in deploy/grafana: generated from the builder, Grafana 10 shaped, reading
only catalogue metrics, with PromQL the real promtool parses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from keeneye.metrics import Metrics
from keeneye.monitoring.alerts.grafana import (
    PIPELINE_VARIABLE_QUERY,
    dashboard_json,
    grafana_dashboards,
    main,
)
from keeneye.monitoring.alerts.promql import exposition_names, metric_names
from keeneye.pipelines.spec import PipelineSpec, builtin_specs
from tests.unit.monitoring.promtool_support import run_promtool

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "grafana"
REGENERATE = "python -m keeneye.monitoring.alerts.grafana deploy/grafana"
NAMES = ["keeneye-overview.json", "keeneye-latency.json", "keeneye-drift.json", "keeneye-scaling.json"]


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    return grafana_dashboards()


def _targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in dashboard["panels"] for t in p["targets"]]


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for _, t in _targets(dashboard)]


def test_the_files_in_deploy_grafana_are_the_builders_output(dashboards: dict[str, dict[str, Any]]) -> None:
    assert sorted(p.name for p in DEPLOY.glob("*.json")) == sorted(NAMES)
    for name, dashboard in dashboards.items():
        assert (DEPLOY / name).read_text(encoding="utf-8") == dashboard_json(dashboard), (
            f"deploy/grafana/{name} is stale: regenerate with `{REGENERATE}`"
        )


def test_main_writes_the_same_bytes(tmp_path: Path, dashboards: dict[str, dict[str, Any]]) -> None:
    assert main([str(tmp_path / "out")]) == 0
    for name in NAMES:
        assert (tmp_path / "out" / name).read_text(encoding="utf-8") == (DEPLOY / name).read_text("utf-8")


def test_every_metric_a_dashboard_reads_is_in_the_catalogue(dashboards: dict[str, dict[str, Any]]) -> None:
    catalogue = exposition_names(Metrics().registry)
    for name, dashboard in dashboards.items():
        for title, target in _targets(dashboard):
            read = metric_names(target["expr"])
            assert read, f"{name} / {title}: no metric in {target['expr']!r}"
            assert read <= catalogue, f"{name} / {title}: {sorted(read - catalogue)} not in the catalogue"
        [variable] = dashboard["templating"]["list"]
        assert variable["query"]["query"] == PIPELINE_VARIABLE_QUERY
        assert "keeneye_requests_total" in catalogue


def test_dashboards_are_grafana_10_import_files(dashboards: dict[str, dict[str, Any]]) -> None:
    assert list(dashboards) == NAMES
    for name, d in dashboards.items():
        assert d["uid"] == name.removesuffix(".json") and d["schemaVersion"] >= 36
        assert [i["name"] for i in d["__inputs"]] == ["DS_PROMETHEUS"]
        [variable] = d["templating"]["list"]
        assert (variable["name"], variable["type"], variable["definition"]) == (
            "pipeline",
            "query",
            "label_values(keeneye_requests_total, pipeline)",
        )
        assert variable["multi"] and variable["includeAll"]
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids))
        cells: set[tuple[int, int]] = set()
        for p in d["panels"]:
            assert p["type"] in {"timeseries", "stat", "table"}
            assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & mine, f"{name}: {p['title']} overlaps another panel"
            cells |= mine
            refs = [t["refId"] for t in p["targets"]]
            assert refs and len(refs) == len(set(refs))
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "${DS_PROMETHEUS}"
                # Every query follows the pipeline selector, except the one gauge without the label.
                assert '$pipeline"' in t["expr"] or metric_names(t["expr"]) == {"keeneye_inflight_requests"}


def test_each_dashboard_shows_what_it_is_for(dashboards: dict[str, dict[str, Any]]) -> None:
    read = {name: set().union(*map(metric_names, _exprs(d))) for name, d in dashboards.items()}
    assert {
        "keeneye_requests_total",
        "keeneye_observations_total",
        "keeneye_rejections_total",
        "keeneye_dead_letters_total",
        "keeneye_queue_lag",
        "keeneye_cache_total",
        "keeneye_model_info",
    } <= read["keeneye-overview.json"]
    assert {
        "keeneye_request_seconds_bucket",
        "keeneye_observation_seconds_bucket",
        "keeneye_stage_seconds_bucket",
    } <= read["keeneye-latency.json"]
    assert {
        "keeneye_drift_score",
        "keeneye_drift_alarm",
        "keeneye_online_quality",
        "keeneye_quality_drop",
    } <= read["keeneye-drift.json"]
    assert {
        "keeneye_replicas",
        "keeneye_desired_replicas",
        "keeneye_min_replicas",
        "keeneye_max_replicas",
        "keeneye_worker_utilization",
    } <= read["keeneye-scaling.json"]
    [table] = [p for p in dashboards["keeneye-overview.json"]["panels"] if p["type"] == "table"]
    assert table["targets"][0]["format"] == "table" and table["targets"][0]["instant"] is True
    scaling = " ".join(_exprs(dashboards["keeneye-scaling.json"]))
    assert 'stat="mean"' in scaling and 'stat="max"' in scaling


def test_latency_panels_have_three_quantiles_and_an_slo_line_per_pipeline(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    panels = {p["title"]: p for p in dashboards["keeneye-latency.json"]["panels"]}
    api = panels["API latency p50 / p95 / p99"]
    legends = [t["legendFormat"] for t in api["targets"]]
    assert legends[:3] == ["{{pipeline}} p50", "{{pipeline}} p95", "{{pipeline}} p99"]
    slo = {t["expr"].split(" * ", 1)[0]: t["expr"] for t in api["targets"] if "SLO" in t["legendFormat"]}
    assert set(slo) == {"0.348", "0.49", "0.5"}
    assert 'pipeline="line-inspection"' in slo["0.348"] and 'pipeline="crop-health"' in slo["0.49"]
    for q in ("0.5", "0.95", "0.99"):
        assert any(
            e.startswith(f"histogram_quantile({q}, sum by (le, pipeline, stage)")
            for e in _exprs(dashboards["keeneye-latency.json"])
        )


def test_slo_lines_follow_the_specs_given() -> None:
    spec = PipelineSpec.model_validate(
        {"name": "fast-line", "task": "classify", "slo": {"p95_latency_ms": 250}}
    )
    exprs = _exprs(grafana_dashboards([spec])["keeneye-latency.json"])
    assert sum(e.startswith("0.25 * group by (pipeline)") for e in exprs) == 2  # API and stream panels
    assert not any(e.startswith("0.348 *") for e in exprs)


def test_promtool_parses_every_dashboard_query(dashboards: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """Grafana's variables replaced by what Grafana sends, each query becomes a recording rule, and
    the real Prometheus parser (``promtool check rules``) must accept them all."""
    rules = []
    for name, d in dashboards.items():
        for i, expr in enumerate(_exprs(d)):
            concrete = expr.replace("$__rate_interval", "1m").replace("$pipeline", ".*")
            rules.append(
                {"record": f"dashboard:{name.split('.')[0].replace('-', '_')}:{i}", "expr": concrete}
            )
    path = tmp_path / "dashboards.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = run_promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_builtin_specs_are_what_the_shipped_dashboards_use() -> None:
    specs = [s for _, s in builtin_specs()]
    assert json.loads(dashboard_json(grafana_dashboards(specs)["keeneye-latency.json"])) == json.loads(
        (DEPLOY / "keeneye-latency.json").read_text("utf-8")
    )
