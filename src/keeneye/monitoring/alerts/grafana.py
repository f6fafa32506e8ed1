"""The Grafana dashboards of ``deploy/grafana``, built from the metric catalogue and the alert rules.

Rewritten with ``python -m keeneye.monitoring.alerts.grafana DIR``; a test keeps the shipped files equal
to what this module builds. Every query follows the dashboard's ``pipeline`` variable; SLO lines come
from the pipeline specs, the load line from the WorkerLoadHigh rule. Deterministic: same input, same bytes.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from keeneye.domain import JsonObject, JsonValue
from keeneye.monitoring.alerts.export import write_files
from keeneye.monitoring.alerts.promql import promql_number, promql_string
from keeneye.monitoring.alerts.rules import AlertRule, load_rules
from keeneye.pipelines import PipelineSpec, builtin_specs

# --------------------------------------------------------------------------------------------------
# Grafana dashboards
# --------------------------------------------------------------------------------------------------

DATASOURCE: JsonObject = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
PIPELINE_VARIABLE_QUERY = "label_values(keeneye_requests_total, pipeline)"
_SEL = 'pipeline=~"$pipeline"'  # every query follows the dashboard's pipeline variable
_RATE = "$__rate_interval"
_GRID_WIDTH = 24


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""
    table: bool = False  # an instant query shown as a table (labels as columns)


@dataclass(frozen=True)
class Panel:
    title: str
    targets: tuple[Target, ...]
    kind: str = "timeseries"  # timeseries | stat | table
    unit: str = "short"
    description: str = ""
    width: int = 12
    height: int = 8
    lines: tuple[float, ...] = ()  # threshold lines (alert and retrain thresholds)
    mappings: Mapping[str, str] = field(default_factory=dict)  # stat: value → text (0 → OK)
    max_value: float | None = None


def _target(t: Target, ref: str) -> JsonObject:
    out: JsonObject = {"refId": ref, "datasource": DATASOURCE, "expr": t.expr, "legendFormat": t.legend}
    if t.table:
        out.update(instant=True, range=False, format="table")
    else:
        out.update(instant=False, range=True, format="time_series")
    return out


def _thresholds(lines: Sequence[float]) -> JsonObject:
    colours = ["red"] if len(lines) == 1 else ["orange", "red"]
    steps: list[JsonValue] = [{"color": "green", "value": None}]
    steps += [{"color": colours[min(i, len(colours) - 1)], "value": v} for i, v in enumerate(lines)]
    return {"mode": "absolute", "steps": steps}


_SLO_OVERRIDE: JsonObject = {
    "matcher": {"id": "byRegexp", "options": ".*SLO.*"},
    "properties": [
        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
        {"id": "custom.lineWidth", "value": 2},
    ],
}


def _panel(p: Panel, panel_id: int, x: int, y: int) -> JsonObject:
    defaults: JsonObject = {"unit": p.unit, "thresholds": _thresholds(p.lines)}
    if p.max_value is not None:
        defaults.update(min=0, max=p.max_value)
    if p.mappings:
        defaults["mappings"] = [
            {
                "type": "value",
                "options": {k: {"text": v, "index": i} for i, (k, v) in enumerate(p.mappings.items())},
            }
        ]
    options: JsonObject
    if p.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 0,
            "showPoints": "never",
            "spanNulls": False,
            "thresholdsStyle": {"mode": "line" if p.lines else "off"},
        }
        options = {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "showLegend": True,
                "calcs": ["lastNotNull", "max"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif p.kind == "stat":
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        }
    else:
        options = {
            "showHeader": True,
            "cellHeight": "sm",
            "footer": {"show": False, "reducer": ["sum"], "fields": ""},
        }
    overrides: list[JsonValue] = [_SLO_OVERRIDE] if any("SLO" in t.legend for t in p.targets) else []
    panel: JsonObject = {
        "id": panel_id,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": p.width, "h": p.height},
        "fieldConfig": {"defaults": defaults, "overrides": overrides},
        "options": options,
        "targets": [_target(t, chr(ord("A") + i)) for i, t in enumerate(p.targets)],
    }
    if p.kind == "table":
        panel["transformations"] = [
            {"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}}}
        ]
    return panel


def _layout(panels: Sequence[Panel]) -> list[JsonValue]:
    """Left to right, wrapping at Grafana's 24 columns; a row is as tall as its tallest panel."""
    out: list[JsonValue] = []
    x, y, row_height = 0, 0, 0
    for i, p in enumerate(panels, start=1):
        if x + p.width > _GRID_WIDTH:
            x, y, row_height = 0, y + row_height, 0
        out.append(_panel(p, i, x, y))
        x, row_height = x + p.width, max(row_height, p.height)
    return out


_PANEL_NAMES = {"timeseries": "Time series", "stat": "Stat", "table": "Table"}


def _dashboard(uid: str, title: str, description: str, panels: Sequence[Panel]) -> JsonObject:
    kinds = sorted({p.kind for p in panels})
    plugins: list[JsonValue] = [
        {"type": "panel", "id": k, "name": _PANEL_NAMES[k], "version": ""} for k in kinds
    ]
    return {
        "__inputs": [
            {
                "name": "DS_PROMETHEUS",
                "label": "Prometheus",
                "description": "the Prometheus that scrapes keeneye's API and worker pods",
                "type": "datasource",
                "pluginId": "prometheus",
                "pluginName": "Prometheus",
            }
        ],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            *plugins,
        ],
        "annotations": {"list": []},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {
                "type": "dashboards",
                "tags": ["keeneye"],
                "asDropdown": True,
                "title": "keeneye",
                "includeVars": True,
            }
        ],
        "panels": _layout(panels),
        "refresh": "30s",
        "schemaVersion": 38,
        "tags": ["keeneye"],
        "templating": {"list": [_pipeline_variable()]},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


def _pipeline_variable() -> JsonObject:
    return {
        "name": "pipeline",
        "label": "pipeline",
        "type": "query",
        "datasource": DATASOURCE,
        "definition": PIPELINE_VARIABLE_QUERY,
        "query": {"query": PIPELINE_VARIABLE_QUERY, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
    }


def _rate_sum(metric: str, extra: str = "", by: str = "pipeline") -> str:
    """``sum by (by) (rate(metric{pipeline=~"$pipeline",extra}[$__rate_interval]))``."""
    matchers = f"{_SEL},{extra}" if extra else _SEL
    inner = f"rate({metric}{{{matchers}}}[{_RATE}])"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


def _ratio(metric: str, extra: str, by: str = "pipeline") -> str:
    return f"{_rate_sum(metric, extra, by)} / {_rate_sum(metric, by=by)}"


def _gauge(metric: str, by: str = "pipeline", extra: str = "") -> str:
    """``max by`` keeps one series per pipeline when several pods export the same gauge."""
    matchers = f"{_SEL},{extra}" if extra else _SEL
    return f"max by ({by}) ({metric}{{{matchers}}})"


def _quantiles(metric: str, by: str, legend: str) -> tuple[Target, ...]:
    return tuple(
        Target(
            f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{_SEL}}}[{_RATE}])))",
            f"{legend} p{name}",
        )
        for q, name in (("0.5", "50"), ("0.95", "95"), ("0.99", "99"))
    )


def _slo_lines(histogram: str, specs: Sequence[PipelineSpec]) -> tuple[Target, ...]:
    """A flat line at each selected pipeline's p95 SLO, drawn while the pipeline has data."""
    return tuple(
        Target(
            f"{promql_number(round(s.slo.p95_latency_ms / 1000.0, 9))} * group by (pipeline) "
            f"({histogram}_count{{{_SEL},pipeline={promql_string(s.name)}}})",
            "{{pipeline}} SLO p95",
        )
        for s in sorted(specs, key=lambda s: s.name)
    )


_HIT = 'result="hit"'
_5XX = 'status=~"5.."'


def _overview() -> list[Panel]:
    return [
        Panel(
            "Requests / s",
            (Target(_rate_sum("keeneye_requests_total", by="")),),
            "stat",
            "reqps",
            width=6,
            height=4,
        ),
        Panel(
            "Observations / s",
            (Target(_rate_sum("keeneye_observations_total", by="")),),
            "stat",
            "ops",
            width=6,
            height=4,
        ),
        Panel("In-flight requests", (Target("sum(keeneye_inflight_requests)"),), "stat", width=6, height=4),
        Panel(
            "Cache hit ratio",
            (Target(_ratio("keeneye_cache_total", _HIT, by="")),),
            "stat",
            "percentunit",
            width=6,
            height=4,
        ),
        Panel(
            "HTTP requests by status",
            (Target(_rate_sum("keeneye_requests_total", by="pipeline, status"), "{{pipeline}} {{status}}"),),
            unit="reqps",
        ),
        Panel(
            "Stream observations by status",
            (
                Target(
                    _rate_sum("keeneye_observations_total", by="pipeline, status"), "{{pipeline}} {{status}}"
                ),
            ),
            unit="ops",
        ),
        Panel(
            "Refused inputs by reason",
            (
                Target(
                    _rate_sum("keeneye_rejections_total", by="pipeline, reason"), "{{pipeline}} {{reason}}"
                ),
            ),
            unit="ops",
            description="Inputs refused before the model, by reason code (format, size, bands ...).",
        ),
        Panel(
            "Dead letters by reason",
            (
                Target(
                    _rate_sum("keeneye_dead_letters_total", by="pipeline, reason"), "{{pipeline}} {{reason}}"
                ),
            ),
            unit="ops",
            description="Messages sent to keeneye.<pipeline>.dlq (alert DeadLettersGrowing).",
        ),
        Panel(
            "API error ratio (5xx)",
            (Target(_ratio("keeneye_requests_total", _5XX), "{{pipeline}}"),),
            unit="percentunit",
            lines=(0.01,),
            description="Alert ApiErrorRateHigh: above 1 % for 5 minutes.",
        ),
        Panel(
            "Queue lag",
            (Target(_gauge("keeneye_queue_lag"), "{{pipeline}}"),),
            description="Messages of keeneye.<pipeline>.in not yet acknowledged by the workers.",
        ),
        Panel(
            "Cache hit ratio by pipeline",
            (Target(_ratio("keeneye_cache_total", _HIT), "{{pipeline}}"),),
            unit="percentunit",
            max_value=1,
        ),
        Panel(
            "Model reloads",
            (
                Target(
                    f"sum by (pipeline) (increase(keeneye_model_reloads_total{{{_SEL}}}[{_RATE}]))",
                    "{{pipeline}}",
                ),
            ),
            description="The served model switched after an alias move (promotion, rollback).",
        ),
        Panel(
            "Model versions serving",
            (Target(_gauge("keeneye_model_info", by="pipeline, model, version"), table=True),),
            "table",
            width=24,
            height=6,
        ),
    ]


def _latency(specs: Sequence[PipelineSpec]) -> list[Panel]:
    return [
        Panel(
            "API latency p50 / p95 / p99",
            _quantiles("keeneye_request_seconds", "pipeline", "{{pipeline}}")
            + _slo_lines("keeneye_request_seconds", specs),
            unit="s",
            width=24,
            description="End-to-end prediction latency inside the server; dashed: the pipeline's p95 SLO "
            "(alert ApiLatencyAboveSlo).",
        ),
        Panel(
            "Stream ingest-to-result latency p50 / p95 / p99",
            _quantiles("keeneye_observation_seconds", "pipeline", "{{pipeline}}")
            + _slo_lines("keeneye_observation_seconds", specs),
            unit="s",
            width=24,
            description="Accepted to stored, for observations from the bus (alert StreamLatencyAboveSlo).",
        ),
        *(
            Panel(
                f"Stage latency {name}",
                (
                    Target(
                        f"histogram_quantile({q}, sum by (le, pipeline, stage) "
                        f"(rate(keeneye_stage_seconds_bucket{{{_SEL}}}[{_RATE}])))",
                        "{{pipeline}} {{stage}}",
                    ),
                ),
                unit="s",
                width=8,
                description="Per processing stage: decode, queue, infer, post, store.",
            )
            for q, name in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))
        ),
        Panel(
            "Images per model run (micro-batching)",
            _quantiles("keeneye_batch_size", "pipeline", "{{pipeline}}"),
            width=24,
        ),
    ]


def _drift() -> list[Panel]:
    return [
        Panel(
            "Drift alarm",
            (Target(_gauge("keeneye_drift_alarm"), "{{pipeline}}"),),
            "stat",
            width=8,
            height=5,
            lines=(1,),
            mappings={"0": "OK", "1": "DRIFT"},
            description="The latest drift window alarms on PSI, KS or MMD (alert DriftDetected).",
        ),
        Panel(
            "Online quality drop",
            (Target(_gauge("keeneye_quality_drop", by="pipeline, version"), "{{pipeline}} v{{version}}"),),
            "stat",
            width=8,
            height=5,
            lines=(1,),
            mappings={"0": "OK", "1": "DROP"},
            description="Online quality too far below its test value (alert QualityDrop).",
        ),
        Panel(
            "Drift windows closed (last hour)",
            (
                Target(
                    f"sum by (pipeline, alarm) (increase(keeneye_drift_windows_total{{{_SEL}}}[1h]))",
                    "{{pipeline}} alarm={{alarm}}",
                ),
            ),
            "stat",
            width=8,
            height=5,
        ),
        Panel(
            "PSI per feature",
            (
                Target(
                    _gauge("keeneye_drift_score", "pipeline, feature", 'test="psi"'),
                    "{{pipeline}} {{feature}}",
                ),
            ),
            lines=(0.2,),
            description="Population stability index of the latest window; retraining default 0.2 "
            "(training.retrain.drift_psi).",
        ),
        Panel(
            "KS statistic per feature",
            (
                Target(
                    _gauge("keeneye_drift_score", "pipeline, feature", 'test="ks"'),
                    "{{pipeline}} {{feature}}",
                ),
            ),
            lines=(0.1,),
            max_value=1,
            description="Kolmogorov-Smirnov statistic of the latest window; retraining default 0.1.",
        ),
        Panel(
            "Embedding MMD p-value",
            (Target(_gauge("keeneye_drift_score", "pipeline", 'test="mmd_p"'), "{{pipeline}}"),),
            max_value=1,
            description="Low p-values mean the embeddings moved away from the reference profile.",
        ),
        Panel(
            "Online quality",
            (
                Target(
                    _gauge("keeneye_online_quality", "pipeline, version, metric"),
                    "{{pipeline}} v{{version}} {{metric}}",
                ),
            ),
            unit="percentunit",
            max_value=1,
            description="Precision, recall and F1 on labelled live traffic, latest window.",
        ),
        Panel(
            "Feedback received",
            (Target(_rate_sum("keeneye_feedback_total", by="pipeline, source"), "{{pipeline}} {{source}}"),),
            unit="ops",
            width=24,
        ),
    ]


def _scaling(load_threshold: float) -> list[Panel]:
    # One series per pipeline and replica kind (stream workers, API processes): the load rules
    # watch every kind.
    busiest = _gauge("keeneye_worker_utilization", by="pipeline, kind", extra='stat="max"')
    return [
        Panel(
            "Replicas: running, desired, min, max",
            (
                Target(_gauge("keeneye_replicas"), "{{pipeline}} running"),
                Target(_gauge("keeneye_desired_replicas"), "{{pipeline}} desired"),
                Target(_gauge("keeneye_min_replicas"), "{{pipeline}} min"),
                Target(_gauge("keeneye_max_replicas"), "{{pipeline}} max"),
            ),
            width=24,
            description="Never above max, whatever the load (alert ReplicasAtMax after 10 minutes at max).",
        ),
        Panel(
            "Replica utilisation (stream workers, API): mean and busiest replica",
            (
                Target(
                    _gauge("keeneye_worker_utilization", by="pipeline, kind", extra='stat="mean"'),
                    "{{pipeline}} {{kind}} mean",
                ),
                Target(busiest, "{{pipeline}} {{kind}} busiest"),
            ),
            unit="percentunit",
            lines=(load_threshold,),
            max_value=1,
            description=f"Alerts WorkerLoadHigh / WorkerLoadCritical: the busiest replica of any kind "
            f"above {load_threshold:.0%} for 5 / 15 minutes (stream: a worker's busy fraction; api: an "
            f"API process's in-flight slots in use).",
        ),
        Panel(
            "Busiest replica now",
            (Target(busiest, "{{pipeline}} {{kind}}"),),
            "stat",
            unit="percentunit",
            lines=(load_threshold, 0.95),
        ),
        Panel("Queue lag", (Target(_gauge("keeneye_queue_lag"), "{{pipeline}}"),)),
        Panel(
            "Scaling decisions",
            (
                Target(
                    f"sum by (pipeline, direction) "
                    f'(increase(keeneye_scaling_decisions_total{{{_SEL},direction!="none"}}[{_RATE}]))',
                    "{{pipeline}} {{direction}}",
                ),
            ),
        ),
    ]


def grafana_dashboards(
    specs: Sequence[PipelineSpec] | None = None, rules: Sequence[AlertRule] | None = None
) -> dict[str, JsonObject]:
    """The four dashboards of ``deploy/grafana``, by file name (SLO lines from ``specs``, the load
    line from ``rules``' WorkerLoadHigh; both default to what keeneye ships)."""
    if specs is None:
        specs = [spec for _, spec in builtin_specs()]
    if rules is None:
        rules = load_rules()
    load = next((r.threshold for r in rules if r.name == "WorkerLoadHigh" and r.threshold is not None), 0.8)
    return {
        "keeneye-overview.json": _dashboard(
            "keeneye-overview",
            "keeneye / overview",
            "Traffic, errors, queue lag, cache and the model versions serving each pipeline.",
            _overview(),
        ),
        "keeneye-latency.json": _dashboard(
            "keeneye-latency",
            "keeneye / latency",
            "p50 / p95 / p99 per pipeline and per stage against each pipeline's p95 SLO.",
            _latency(specs),
        ),
        "keeneye-drift.json": _dashboard(
            "keeneye-drift",
            "keeneye / drift and quality",
            "Input drift per feature, drift alarms, online quality from feedback and quality drops.",
            _drift(),
        ),
        "keeneye-scaling.json": _dashboard(
            "keeneye-scaling",
            "keeneye / scaling",
            "Worker replicas against the autoscaler's min / max and the load that drives them.",
            _scaling(load),
        ),
    }


def dashboard_json(dashboard: Mapping[str, JsonValue]) -> str:
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


def write_grafana_dashboards(
    out_dir: Path, specs: Sequence[PipelineSpec] | None = None, rules: Sequence[AlertRule] | None = None
) -> list[Path]:
    """Write :func:`grafana_dashboards` as JSON files into ``out_dir``; returns their paths."""
    dashboards = grafana_dashboards(specs, rules)
    return write_files(Path(out_dir), {name: dashboard_json(d) for name, d in dashboards.items()})


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m keeneye.monitoring.alerts.grafana DIR``: rewrite the shipped Grafana dashboards."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out_dir", type=Path, help="folder for the dashboards, e.g. deploy/grafana")
    args = parser.parse_args(argv)
    write_grafana_dashboards(args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
