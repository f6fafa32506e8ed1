"""promtool unit tests derived from the alert rules and pipeline specs (``keeneye-rules.test.yaml``).

Each packaged rule is proven to fire after its ``for`` and not a minute before, with its exact labels
and annotations: one synthetic series per rule kind (:data:`SCENARIOS`) is written so the rule's
expression crosses its threshold at a known minute. ``promtool test rules`` runs them in CI.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TypedDict

from keeneye.metrics import LATENCY_BUCKETS
from keeneye.monitoring.alerts.promql import (
    RULES_FILE,
    Judgement,
    bucket_metric,
    judgement,
    promql_number,
    rule_labels,
    selector,
)
from keeneye.monitoring.alerts.rules import AlertRule
from keeneye.pipelines import PipelineSpec

# --------------------------------------------------------------------------------------------------
# promtool unit tests
# --------------------------------------------------------------------------------------------------

STEP = 60.0  # the tests' evaluation interval and sample spacing (1m)
QUIET_STEPS = 5  # the increase scenario's counter stays flat this many minutes first


@dataclass(frozen=True)
class Scenario:
    """Test data for one packaged rule; timings, thresholds and expectations come from the rule."""

    hot: float = 1.0  # threshold kind: a value that breaks the rule
    quiet: float | None = None  # threshold kind: value at t=0 before ``hot``; None = hot from t=0
    labels: Mapping[str, str] = field(default_factory=dict)  # extra series labels
    # threshold kind: one series per variant and pipeline, each with these labels too (each fires)
    variants: tuple[Mapping[str, str], ...] = ({},)
    bad: Mapping[str, str] = field(default_factory=dict)  # rate_ratio: a series inside the numerator
    good: Mapping[str, str] = field(default_factory=dict)  # rate_ratio: a series outside it


# The load rules hold for every replica kind: a stream worker and an API process each fire.
REPLICA_KINDS: tuple[Mapping[str, str], ...] = ({"kind": "stream"}, {"kind": "api"})

SCENARIOS: dict[str, Scenario] = {
    "WorkerLoadHigh": Scenario(hot=0.9, variants=REPLICA_KINDS),
    "WorkerLoadCritical": Scenario(hot=0.9, variants=REPLICA_KINDS),
    "WorkerSaturated": Scenario(hot=0.97, variants=REPLICA_KINDS),
    "ApiLatencyAboveSlo": Scenario(),
    "StreamLatencyAboveSlo": Scenario(),
    "ApiErrorRateHigh": Scenario(bad={"status": "503"}, good={"status": "200"}),
    "StreamErrorRateHigh": Scenario(bad={"status": "failed"}, good={"status": "done"}),
    "DriftDetected": Scenario(hot=1.0, quiet=0.0),
    "QualityDrop": Scenario(hot=1.0, quiet=0.0, labels={"version": "3"}),
    "DeadLettersGrowing": Scenario(labels={"reason": "bad_image"}),
    "ReplicasAtMax": Scenario(),
    "PlcUnreachable": Scenario(hot=0.0, quiet=1.0, labels={"line": "L1", "camera": "C1", "sink": "modbus"}),
    "InspectionDeadlineMissed": Scenario(labels={"line": "L1", "camera": "C1", "reason": "deadline_missed"}),
}


def go_number(value: float) -> str:
    """``value`` as Go's ``%v`` prints a float64 — what ``{{ $value }}`` expands to in Prometheus."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + exponent  # position of the decimal point from the left of ``digits``
    head = "-" if sign else ""
    e10 = point - 1
    if e10 < -4 or e10 >= 6:  # strconv 'g', shortest: %e outside [1e-4, 1e6)
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{head}{mantissa}e{'-' if e10 < 0 else '+'}{abs(e10):02d}"
    if point <= 0:
        return f"{head}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{head}{digits}{'0' * (point - len(digits))}"
    return f"{head}{digits[:point]}.{digits[point:]}"


_TEMPLATE = re.compile(r"\{\{\s*(?:\$labels\.([A-Za-z_][A-Za-z0-9_]*)|(\$value))\s*\}\}")


def expand_template(text: str, labels: Mapping[str, str], value: float) -> str | None:
    """Expand ``{{ $labels.x }}`` and ``{{ $value }}``; ``None`` if ``text`` uses anything else."""
    out = _TEMPLATE.sub(lambda m: go_number(value) if m.group(2) else labels.get(m.group(1), ""), text)
    return None if "{{" in out else out


def holds(value: float, op: str, threshold: float) -> bool:
    """``value OP threshold`` as PromQL compares."""
    compare = {
        ">": value > threshold,
        ">=": value >= threshold,
        "<": value < threshold,
        "<=": value <= threshold,
        "==": value == threshold,
        "!=": value != threshold,
    }
    return compare[op]


def _plain(match: Mapping[str, str]) -> dict[str, str] | None:
    """A selector's matchers as concrete series labels, or ``None`` when one is a regex."""
    return None if any(v.startswith("~") for v in match.values()) else dict(match)


def _fits(match: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether series ``labels`` satisfy a selector's ``match`` (``~`` = full regex match)."""
    for label, want in match.items():
        got = labels.get(label, "")
        if want.startswith("~") and re.fullmatch(want[1:], got) is None:
            return False
        if not want.startswith("~") and got != want:
            return False
    return True


@dataclass(frozen=True)
class _Fire:
    """One pipeline's expected alert: the condition holds from ``since``; labels and value then."""

    since: float
    for_seconds: float
    labels: dict[str, str]
    value: float

    @property
    def at(self) -> float:
        """The first evaluation (on the 1m grid) at which the alert is firing."""
        return self.since + math.ceil(self.for_seconds / STEP) * STEP


@dataclass
class _Case:
    """One promtool test group under construction; series values use ``{N}`` for the horizon."""

    rule: AlertRule
    specs: dict[str, PipelineSpec]  # every pipeline, by name: disabled ones get series too
    judged: dict[str, Judgement]  # the pipelines the rule applies to
    series: list[tuple[str, dict[str, str], str]] = field(default_factory=list)
    fires: dict[str, _Fire] = field(default_factory=dict)  # by pipeline (and variant, when several)

    def add(self, metric: str, labels: dict[str, str], values: str) -> None:
        self.series.append((metric, labels, values))

    def expect(
        self, pipeline: str, since: float, labels: Mapping[str, str], value: float, variant: str = ""
    ) -> None:
        """``pipeline``'s series (of ``variant``) breaks the rule from ``since`` with ``value``: it
        fires if its own (overridden) threshold agrees."""
        how = self.judged.get(pipeline)
        if how is None:
            return
        if self.rule.kind == "compare" or (
            how.threshold is not None and holds(value, self.rule.op, how.threshold)
        ):
            key = f"{pipeline}\x00{variant}" if variant else pipeline
            self.fires[key] = _Fire(since, how.for_seconds, dict(labels), value)

    def by_labels(self, labels: Mapping[str, str]) -> dict[str, str]:
        """The labels an aggregated (``sum by`` / ``on``) result keeps."""
        return {k: v for k, v in labels.items() if k in self.rule.by}


def _threshold_case(case: _Case, sc: Scenario) -> bool:
    rule = case.rule
    match = _plain(rule.match)
    if match is None or rule.metric is None:
        return False
    values = f"{promql_number(sc.hot)}x{{N}}"
    if sc.quiet is not None:
        quiet = sc.quiet
        if any(h.threshold is not None and holds(quiet, rule.op, h.threshold) for h in case.judged.values()):
            return False  # the quiet value would fire already: no meaningful test
        values = f"{promql_number(quiet)} {values}"
    for pipeline in case.specs:
        for variant in sc.variants:
            labels = {**match, **sc.labels, **variant, "pipeline": pipeline}
            case.add(rule.metric, labels, values)
            name = ",".join(f"{k}={v}" for k, v in sorted(variant.items()))
            case.expect(pipeline, 0.0 if sc.quiet is None else STEP, labels, sc.hot, name)
    return True


def _quantile_case(case: _Case, sc: Scenario) -> bool:
    """Every pipeline gets the same histogram, every request slower than the bucket ``bound``:
    ``histogram_quantile`` then returns exactly ``bound`` (the highest finite bucket), an exact
    ``$value``, and only the pipelines whose threshold is below it fire."""
    rule = case.rule
    match = _plain(rule.match)
    thresholds = [h.threshold for h in case.judged.values() if h.threshold is not None]
    if match is None or rule.metric is None or rule.op not in (">", ">=") or not thresholds:
        return False
    above = [b for b in LATENCY_BUCKETS if b > min(thresholds)]
    if not above:
        return False
    bound = above[0]
    metric = bucket_metric(rule.metric)
    for pipeline in case.specs:
        labels = {**match, **sc.labels, "pipeline": pipeline}
        for b in (b for b in LATENCY_BUCKETS if b <= bound):
            case.add(metric, {**labels, "le": promql_number(b)}, "0x{N}")
        case.add(metric, {**labels, "le": "+Inf"}, "0+60x{N}")
        case.expect(pipeline, STEP, case.by_labels(labels), bound)  # a rate needs two samples: 1m
    return True


def _rate_ratio_case(case: _Case, sc: Scenario) -> bool:
    """A series inside the numerator and an equally fast one outside it: the ratio is exactly 0.5."""
    rule = case.rule
    num, den = rule.numerator, rule.denominator
    assert num is not None and den is not None
    den_match = _plain(den.match)
    if not sc.bad or num.metric != den.metric or den_match is None:
        return False
    for pipeline in case.specs:
        base = {**den_match, **sc.labels, "pipeline": pipeline}
        bad, good = {**base, **sc.bad}, {**base, **sc.good}
        if not (_fits(num.match, bad) and not _fits(num.match, good) and _fits(den.match, good)):
            return False
        case.add(num.metric, bad, "0+60x{N}")
        case.add(num.metric, good, "0+60x{N}")
        case.expect(pipeline, STEP, case.by_labels(base), 0.5)
    return True


def _increase_case(case: _Case, sc: Scenario) -> bool:
    """A counter flat at 0, then +1 a minute. Its first sample is 0 and the evaluation falls on a
    sample, so Prometheus' extrapolation adds nothing: ``increase`` is exactly 1 when it fires."""
    rule = case.rule
    match = _plain(rule.match)
    if match is None or rule.metric is None or rule.op not in (">", ">="):
        return False
    if any(
        h.for_seconds > 0 or (h.threshold is not None and holds(0.0, rule.op, h.threshold))
        for h in case.judged.values()
    ):
        return False  # the value would be an extrapolated one at firing time, or 0 would fire
    for pipeline in case.specs:
        labels = {**match, **sc.labels, "pipeline": pipeline}
        case.add(rule.metric, labels, f"0x{QUIET_STEPS} 1+1x{{N}}")
        case.expect(pipeline, (QUIET_STEPS + 1) * STEP, case.by_labels(labels), 1.0)
    return True


def _compare_case(case: _Case, sc: Scenario) -> bool:
    """Every pipeline but the last runs at its maximum replica count; the last stays at its minimum."""
    rule, other = case.rule, case.rule.other
    assert other is not None and rule.metric is not None
    left_match, right_match = _plain(rule.match), _plain(other.match)
    if left_match is None or right_match is None or rule.op not in (">=", "<=", "=="):
        return False
    for i, (pipeline, spec) in enumerate(case.specs.items()):
        at_max = i < len(case.specs) - 1 or len(case.specs) == 1
        current = spec.replicas.max if at_max else spec.replicas.min
        labels = {**left_match, "pipeline": pipeline}
        case.add(rule.metric, labels, f"{current}x{{N}}")
        case.add(other.metric, {**right_match, "pipeline": pipeline}, f"{spec.replicas.max}x{{N}}")
        if holds(float(current), rule.op, float(spec.replicas.max)):
            case.expect(pipeline, 0.0, case.by_labels(labels), float(current))
    return True


_CASE_BUILDERS = {
    "threshold": _threshold_case,
    "quantile": _quantile_case,
    "rate_ratio": _rate_ratio_case,
    "increase": _increase_case,
    "compare": _compare_case,
}


def _minutes(seconds: float) -> str:
    return f"{int(seconds // STEP)}m"


class AlertExpectationJson(TypedDict):
    exp_labels: dict[str, str]
    exp_annotations: dict[str, str]


class AlertRuleTestJson(TypedDict):
    eval_time: str
    alertname: str
    exp_alerts: list[AlertExpectationJson]


class InputSeriesJson(TypedDict):
    series: str
    values: str


class RuleTestGroupJson(TypedDict):
    name: str
    interval: str
    input_series: list[InputSeriesJson]
    alert_rule_test: list[AlertRuleTestJson]


class RuleTestsJson(TypedDict):
    """A promtool unit test file (``promtool test rules``)."""

    rule_files: list[str]
    evaluation_interval: str
    tests: list[RuleTestGroupJson]


def _test_group(case: _Case) -> RuleTestGroupJson | None:
    """The promtool test group: no alert one evaluation before each pipeline's firing time, then
    every pipeline that fired by then, with its exact labels and expanded annotations."""
    rule = case.rule
    if not case.fires:
        return None
    times = {f.at for f in case.fires.values()} | {f.at - STEP for f in case.fires.values() if f.at >= STEP}
    checks: list[AlertRuleTestJson] = []
    for t in sorted(times):
        expected: list[AlertExpectationJson] = []
        for key in sorted(k for k, f in case.fires.items() if f.at <= t):
            fire = case.fires[key]
            labels = {**fire.labels, **rule_labels(rule)}
            expanded = {k: expand_template(v, labels, fire.value) for k, v in rule.annotations.items()}
            annotations = {k: a for k, a in expanded.items() if a is not None}
            if len(annotations) < len(expanded):
                return None  # a template this generator cannot predict: no test for this rule
            expected.append({"exp_labels": labels, "exp_annotations": annotations})
        checks.append({"eval_time": _minutes(t), "alertname": rule.name, "exp_alerts": expected})
    horizon = str(int(max(times) // STEP) + 5)
    series: list[InputSeriesJson] = [
        {"series": selector(m, labels), "values": v.replace("{N}", horizon)} for m, labels, v in case.series
    ]
    return {"name": rule.name, "interval": "1m", "input_series": series, "alert_rule_test": checks}


def rule_tests(
    rules: Sequence[AlertRule], specs: Sequence[PipelineSpec], rules_file: str = RULES_FILE
) -> RuleTestsJson:
    """promtool unit tests (``promtool test rules``) for the packaged rules found in ``rules``.

    One test group per rule: every pipeline the rule applies to gets series that break it; the alert
    must not be firing one evaluation before ``for`` has passed and must fire once it has, per
    pipeline (after SLOs and overrides), with its labels and expanded annotations. Rules keeneye does
    not ship (or whose matchers are regular expressions with no known value) get no test here.
    """
    groups: list[RuleTestGroupJson] = []
    for rule in rules:
        scenario = SCENARIOS.get(rule.name)
        if scenario is None:
            continue
        ordered = sorted(specs, key=lambda s: s.name)
        judged = {s.name: j for s in ordered if (j := judgement(rule, s)) is not None}
        case = _Case(rule, {s.name: s for s in ordered}, judged)
        if judged and _CASE_BUILDERS[rule.kind](case, scenario) and (group := _test_group(case)):
            groups.append(group)
    return {"rule_files": [rules_file], "evaluation_interval": "1m", "tests": groups}
