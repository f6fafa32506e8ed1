"""Alert rules: one YAML schema, evaluated by keeneye's own engine and exported to Prometheus.

A rule is not free PromQL: it is one of five *kinds* whose meaning is the same in both places, so
the embedded engine (:mod:`keeneye.monitoring.alerts.engine`) and the exported Prometheus rule files
(:mod:`keeneye.monitoring.alerts.promql`) can never disagree. Metric names are the exposition names
(counters end in ``_total``, histograms are read through ``_bucket``), as PromQL sees them.

==========  ===============================================================================
kind        meaning (PromQL it renders to)
==========  ===============================================================================
threshold   ``metric{match} OP threshold`` — every series on its own (gauges)
rate_ratio  ``sum by (by) (rate(numerator{…}[window])) / sum by (by) (rate(denominator{…}[window])) OP t``
            (no denominator traffic → no value → not firing)
quantile    ``histogram_quantile(q, sum by (le, by) (rate(metric_bucket{match}[window]))) OP t``
increase    ``sum by (by) (increase(metric{match}[window])) OP threshold``
compare     ``metric{match} OP on (by) other{other.match}`` — e.g. replicas >= max replicas
==========  ===============================================================================

``match`` maps a label to a value; a value starting with ``~`` is a regular expression matched in
full (PromQL ``=~``). ``threshold_from: slo_p95`` takes the threshold per pipeline from the pipeline
spec (``slo.p95_latency_ms`` / 1000, in seconds); such a rule needs ``pipeline`` in ``by``.

``for`` is how long the condition must hold before ``pending`` becomes ``firing`` (``0s`` = at once).
Annotations may use ``{{ $labels.<name> }}`` and ``{{ $value }}`` like Prometheus templates.

Pipeline specs override rules by name (``alerts:`` in the spec: ``enabled``, ``threshold``, ``for``),
for that pipeline's series only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from keeneye.domain import InvalidInput, parse_duration

Severity = Literal["info", "warning", "critical"]
Kind = Literal["threshold", "rate_ratio", "quantile", "increase", "compare"]
Op = Literal[">", ">=", "<", "<=", "==", "!="]

RULE_NAME = r"^[A-Z][A-Za-z0-9]*$"
METRIC_NAME = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Selector(_Strict):
    """A metric and its label matchers (``~`` prefix = regex)."""

    metric: str = Field(..., pattern=METRIC_NAME)
    match: dict[str, str] = Field(default_factory=dict)

    @field_validator("match")
    @classmethod
    def _check_regex(cls, value: dict[str, str]) -> dict[str, str]:
        for label, v in value.items():
            if v.startswith("~"):
                try:
                    re.compile(v[1:])
                except re.error as exc:
                    raise ValueError(f"label {label}: bad regular expression {v[1:]!r}: {exc}") from exc
        return value


class AlertRule(_Strict):
    name: str = Field(..., pattern=RULE_NAME, description="CamelCase, unique; the Prometheus alertname")
    kind: Kind
    metric: str | None = Field(
        None, pattern=METRIC_NAME, description="threshold, quantile, increase, compare"
    )
    match: dict[str, str] = Field(default_factory=dict)
    numerator: Selector | None = None  # rate_ratio
    denominator: Selector | None = None  # rate_ratio
    other: Selector | None = None  # compare
    quantile: float | None = Field(None, gt=0, lt=1)
    window: str = Field("5m", description="range of rate/increase/quantile")
    by: list[str] = Field(default_factory=lambda: ["pipeline"], description="labels kept on the result")
    op: Op = ">"
    threshold: float | None = None
    threshold_from: Literal["slo_p95"] | None = None
    for_: str = Field("0s", alias="for")
    severity: Severity = "warning"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("window", "for_")
    @classmethod
    def _check_duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @model_validator(mode="after")
    def _check_kind(self) -> AlertRule:
        needs_metric = self.kind in ("threshold", "quantile", "increase", "compare")
        if needs_metric and not self.metric:
            raise ValueError(f"a {self.kind} rule needs metric")
        if self.kind == "rate_ratio" and (self.numerator is None or self.denominator is None):
            raise ValueError("a rate_ratio rule needs numerator and denominator")
        if self.kind == "quantile" and self.quantile is None:
            raise ValueError("a quantile rule needs quantile (e.g. 0.95)")
        if self.kind == "compare" and self.other is None:
            raise ValueError("a compare rule needs other")
        if (self.threshold is None) == (self.threshold_from is None) and self.kind != "compare":
            raise ValueError("give exactly one of threshold or threshold_from")
        if self.threshold_from == "slo_p95" and "pipeline" not in self.by:
            raise ValueError("threshold_from: slo_p95 needs pipeline in by")
        return self

    @property
    def for_seconds(self) -> float:
        return parse_duration(self.for_)

    @property
    def window_seconds(self) -> float:
        return parse_duration(self.window)


class RuleFile(_Strict):
    rules: list[AlertRule]


DEFAULT_RULES_RESOURCE = "default.yaml"


def default_rules_text() -> str:
    """The packaged default rules (also at ``deploy/alerts/default.yaml``)."""
    return resources.files("keeneye.monitoring.alerts").joinpath(DEFAULT_RULES_RESOURCE).read_text()


def parse_rules(text: str, *, source: str) -> list[AlertRule]:
    """Validate one YAML rule file; errors are one line naming the file, the rule and the field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput("bad_rules", f"{source}: not valid YAML: {exc}") from exc
    try:
        return RuleFile.model_validate(data).rules
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise InvalidInput(
            "bad_rules", f"{source}: {where}: {err['msg'].removeprefix('Value error, ')}"
        ) from exc


def load_rules(extra: Sequence[Path] = ()) -> list[AlertRule]:
    """Packaged defaults, then every ``*.yaml`` in ``extra`` (files or folders); a later rule with the
    same name replaces an earlier one."""
    by_name = {r.name: r for r in parse_rules(default_rules_text(), source="keeneye defaults")}
    for path in _rule_files(extra):
        for rule in parse_rules(path.read_text(), source=str(path)):
            by_name[rule.name] = rule
    return list(by_name.values())


def _rule_files(paths: Iterable[Path]) -> Iterable[Path]:
    for p in paths:
        if p.is_dir():
            yield from sorted([*p.glob("*.yaml"), *p.glob("*.yml")])
        elif p.is_file():
            yield p
        else:
            raise InvalidInput("bad_rules", f"{p}: no such rule file or folder", status=400)
