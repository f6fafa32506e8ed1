"""Alert rules as Prometheus rules: PromQL rendering, per-pipeline expansion, the rule file.

``keeneye up`` evaluates the rules in :mod:`keeneye.monitoring.alerts.rules` with its embedded engine;
a cluster hands the same job to Prometheus. This module renders each rule to the PromQL its *kind* is
defined as (the table in ``rules.py``), so the two evaluators cannot disagree:

- ``threshold_from: slo_p95`` becomes one rule per pipeline, ``{pipeline="X"}``, with that pipeline's
  SLO in seconds;
- a pipeline spec's override (``alerts:`` → enabled / threshold / for) gives that pipeline its own
  variant (``{pipeline="X"}``, or no rule when disabled) and the shared rule excludes it
  (``pipeline!~"X|Y"``), so every pipeline's series is judged by exactly one rule;
- a match value starting with ``~`` becomes a full-match regular expression (``=~``).

It also names the metrics an expression reads (:func:`metric_names`) and those a registry exposes
(:func:`exposition_names`), so tests can prove every rule and panel reads a real metric.
Everything is deterministic: the same rules and specs give the same bytes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import yaml
from prometheus_client import CollectorRegistry

from keeneye.domain import parse_duration
from keeneye.monitoring.alerts.rules import AlertRule, Selector
from keeneye.pipelines import PipelineSpec, RuleOverride

RULES_FILE = "keeneye-rules.yaml"
RULE_GROUP = "keeneye"


# --------------------------------------------------------------------------------------------------
# PromQL rendering
# --------------------------------------------------------------------------------------------------


def promql_number(value: float) -> str:
    """A float as a PromQL literal: ``0.8``, ``5``, ``+Inf``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def promql_string(value: str) -> str:
    """A PromQL double-quoted string (backslashes and quotes escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _regex_literal(text: str) -> str:
    """``text`` as an RE2 pattern matching exactly itself (pipeline slugs need no escaping)."""
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", text)


@dataclass(frozen=True)
class Scope:
    """Which pipelines' series a rendered rule reads: all, all but ``exclude``, or ``only`` one."""

    only: str | None = None
    exclude: tuple[str, ...] = ()

    def matchers(self) -> list[str]:
        if self.only is not None:
            return [f"pipeline={promql_string(self.only)}"]
        if self.exclude:
            pattern = "|".join(_regex_literal(p) for p in self.exclude)
            return [f"pipeline!~{promql_string(pattern)}"]
        return []


def selector(metric: str, match: Mapping[str, str], scope: Scope = Scope()) -> str:
    """``metric{label="v",other=~"re"}``; a value starting with ``~`` is a regex (``=~``)."""
    parts = [
        f"{label}=~{promql_string(v[1:])}" if v.startswith("~") else f"{label}={promql_string(v)}"
        for label, v in match.items()
    ]
    parts += scope.matchers()
    return f"{metric}{{{','.join(parts)}}}" if parts else metric


def _sum_by(labels: Sequence[str], inner: str) -> str:
    return f"sum by ({', '.join(labels)}) ({inner})" if labels else f"sum({inner})"


def bucket_metric(metric: str) -> str:
    return metric if metric.endswith("_bucket") else f"{metric}_bucket"


def render_expr(rule: AlertRule, *, threshold: float | None = None, scope: Scope = Scope()) -> str:
    """The PromQL of one rule (the table in :mod:`keeneye.monitoring.alerts.rules`).

    ``threshold`` replaces the rule's own (SLO expansion, pipeline overrides); ``scope`` adds the
    pipeline matcher of a per-pipeline variant or of the shared rule that leaves overridden ones out.
    """
    limit = rule.threshold if threshold is None else threshold
    window = rule.window
    if rule.kind == "compare":
        assert rule.metric is not None and rule.other is not None  # the model validator checks
        left = selector(rule.metric, rule.match, scope)
        right = selector(rule.other.metric, rule.other.match)
        return f"{left} {rule.op} on ({', '.join(rule.by)}) {right}"
    if limit is None:
        raise ValueError(f"rule {rule.name}: no threshold to render (threshold_from needs a pipeline)")
    bound = f"{rule.op} {promql_number(limit)}"
    if rule.kind == "rate_ratio":
        assert rule.numerator is not None and rule.denominator is not None
        num, den = (_over_window("rate", s, window, scope) for s in (rule.numerator, rule.denominator))
        return f"{_sum_by(rule.by, num)} / {_sum_by(rule.by, den)} {bound}"
    assert rule.metric is not None
    if rule.kind == "quantile":
        assert rule.quantile is not None
        buckets = Selector(metric=bucket_metric(rule.metric), match=rule.match)
        by = ["le", *(label for label in rule.by if label != "le")]
        rate = _over_window("rate", buckets, window, scope)
        return f"histogram_quantile({promql_number(rule.quantile)}, {_sum_by(by, rate)}) {bound}"
    if rule.kind == "increase":
        increase = _over_window("increase", Selector(metric=rule.metric, match=rule.match), window, scope)
        return f"{_sum_by(rule.by, increase)} {bound}"
    return f"{selector(rule.metric, rule.match, scope)} {bound}"  # threshold


def _over_window(function: str, sel: Selector, window: str, scope: Scope) -> str:
    """``rate(metric{…}[5m])`` / ``increase(…)``."""
    return f"{function}({selector(sel.metric, sel.match, scope)}[{window}])"


# --------------------------------------------------------------------------------------------------
# Rule expansion: SLOs and pipeline overrides
# --------------------------------------------------------------------------------------------------


# ``for`` is a Python keyword, hence the functional TypedDict form.
PrometheusRuleJson = TypedDict(
    "PrometheusRuleJson",
    {"alert": str, "expr": str, "for": str, "labels": dict[str, str], "annotations": dict[str, str]},
)


class RuleGroupJson(TypedDict):
    name: str
    rules: list[PrometheusRuleJson]


class RuleFileJson(TypedDict):
    """A Prometheus rule file (``rule_files:`` of prometheus.yml)."""

    groups: list[RuleGroupJson]


@dataclass(frozen=True)
class PrometheusRule:
    """One alerting rule of the exported file."""

    alert: str
    expr: str
    for_: str
    labels: dict[str, str]
    annotations: dict[str, str]

    def to_dict(self) -> PrometheusRuleJson:
        return {
            "alert": self.alert,
            "expr": self.expr,
            "for": self.for_,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
        }


@dataclass(frozen=True)
class Judgement:
    """How one rule judges one pipeline's series: its threshold and ``for`` after overrides."""

    threshold: float | None
    for_: str

    @property
    def for_seconds(self) -> float:
        return parse_duration(self.for_)


def _changes(rule: AlertRule, override: RuleOverride | None) -> bool:
    """Whether an override makes the pipeline's rule differ from the shared one."""
    if override is None:
        return False
    if not override.enabled:
        return True
    new_threshold = override.threshold is not None and rule.kind != "compare"
    if new_threshold and override.threshold != rule.threshold:
        return True
    return override.for_ is not None and parse_duration(override.for_) != rule.for_seconds


def judgement(rule: AlertRule, spec: PipelineSpec) -> Judgement | None:
    """The rule as it applies to ``spec``'s pipeline; ``None`` when the spec disables it."""
    override = spec.alerts.get(rule.name)
    if override is not None and not override.enabled:
        return None
    threshold = rule.threshold
    if rule.threshold_from == "slo_p95":
        threshold = round(spec.slo.p95_latency_ms / 1000.0, 9)
    if override is not None and override.threshold is not None and rule.kind != "compare":
        threshold = override.threshold
    for_ = override.for_ if override is not None and override.for_ is not None else rule.for_
    return Judgement(threshold, for_)


def rule_labels(rule: AlertRule) -> dict[str, str]:
    return {"severity": rule.severity, **{k: v for k, v in rule.labels.items() if k != "severity"}}


def expand_rule(rule: AlertRule, specs: Sequence[PipelineSpec]) -> list[PrometheusRule]:
    """One keeneye rule → its Prometheus rules (shared rule first, then variants by pipeline name)."""
    ordered = sorted(specs, key=lambda s: s.name)
    out: list[PrometheusRule] = []

    def emit(scope: Scope, how: Judgement) -> None:
        expr = render_expr(rule, threshold=how.threshold, scope=scope)
        # A variant names its pipeline as a label too: the value its series already carry, and what
        # keeps two rules with one alert name distinct for `promtool check rules`.
        labels = rule_labels(rule) if scope.only is None else {**rule_labels(rule), "pipeline": scope.only}
        out.append(PrometheusRule(rule.name, expr, how.for_, labels, dict(rule.annotations)))

    if rule.threshold_from == "slo_p95":  # no shared rule: the threshold exists per pipeline only
        variants = list(ordered)
    else:
        variants = [s for s in ordered if _changes(rule, s.alerts.get(rule.name))]
        emit(Scope(exclude=tuple(s.name for s in variants)), Judgement(rule.threshold, rule.for_))
    for spec in variants:
        how = judgement(rule, spec)
        if how is not None:
            emit(Scope(only=spec.name), how)
    return out


def prometheus_rules(rules: Sequence[AlertRule], specs: Sequence[PipelineSpec]) -> list[PrometheusRule]:
    return [p for rule in rules for p in expand_rule(rule, specs)]


def rule_file(rules: Sequence[AlertRule], specs: Sequence[PipelineSpec]) -> RuleFileJson:
    """The Prometheus rule file (``groups:`` → one ``keeneye`` group)."""
    return {"groups": [{"name": RULE_GROUP, "rules": [r.to_dict() for r in prometheus_rules(rules, specs)]}]}


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000, default_flow_style=False)


# --------------------------------------------------------------------------------------------------
# Metric names: the catalogue as Prometheus exposes it, and the names an expression reads
# --------------------------------------------------------------------------------------------------

_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("_count", "_sum"),
}


def exposition_names(registry: CollectorRegistry) -> set[str]:
    """Every series name ``registry`` exposes: counters as ``_total``, histograms as
    ``_bucket``/``_count``/``_sum``, gauges as they are (whether or not a series exists yet)."""
    names: set[str] = set()
    for family in registry.collect():
        suffixes = _SUFFIXES.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names


_PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_BRACES = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w$.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, keywords, label names, strings,
    durations and Grafana ``$variables`` left out)."""
    text = _STRING.sub('""', expr)
    text = _BRACES.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    return {
        m.group(1)
        for m in _IDENT.finditer(text)
        if m.group(2) is None and m.group(1).lower() not in _PROMQL_KEYWORDS
    }
