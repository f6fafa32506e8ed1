"""Quality gates: may this model serve? Pure logic over metrics, table-tested.

Three kinds of check, all from the pipeline spec's ``gates`` section:

* ``absolute`` — every gated metric reaches its floor (``metrics: {precision: 0.97, …}``);
* ``regression`` — no gated metric trails the current champion's, measured on the **same** test
  split, by more than ``max_regression``;
* ``subgroup`` — every group of ``subgroup_by`` (e.g. each SKU) reaches ``subgroup_floor`` on every
  gated metric; groups where a metric is undefined (e.g. no defects in that SKU) are skipped and said so.

A metric that was not measured fails its absolute check: an unmeasurable model does not serve.

``targets`` (e.g. the design's recall ≥ 0.965, mask mAP@0.5 ≥ 0.62 for line-inspection) are reported
as checks of kind ``target`` — value, target, met or not, the gap in the message — and never block:
``passed`` and ``reasons`` are the gates' alone; :attr:`GateResult.targets_met` says whether all were met.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypedDict

from keeneye.pipelines import GatesSection

CheckKind = Literal["absolute", "regression", "subgroup", "target"]


class GateCheckJson(TypedDict):
    """:meth:`GateCheck.to_dict`: the dataclass's fields, in order."""

    kind: CheckKind
    metric: str
    value: float | None
    threshold: float
    passed: bool
    message: str
    group: str | None


class GateResultJson(TypedDict):
    """:meth:`GateResult.to_dict` (``gates.json``, the manifest's ``gates``)."""

    passed: bool
    reasons: list[str]
    checks: list[GateCheckJson]
    notes: list[str]
    champion_version: str | None


@dataclass(frozen=True)
class GateCheck:
    """One comparison: ``value`` against ``threshold`` for ``metric`` (and ``group`` for subgroups)."""

    kind: CheckKind
    metric: str
    value: float | None
    threshold: float
    passed: bool
    message: str
    group: str | None = None

    def to_dict(self) -> GateCheckJson:
        return {
            "kind": self.kind,
            "metric": self.metric,
            "value": self.value,
            "threshold": self.threshold,
            "passed": self.passed,
            "message": self.message,
            "group": self.group,
        }


@dataclass(frozen=True)
class GateResult:
    passed: bool
    checks: list[GateCheck]
    notes: list[str] = field(default_factory=list)
    champion_version: str | None = None

    @property
    def reasons(self) -> list[str]:
        """One line per failed gate check, naming metric, value and threshold (targets are no gates)."""
        return [c.message for c in self.checks if not c.passed and c.kind != "target"]

    @property
    def targets_met(self) -> bool | None:
        """Whether every reported target was met; None when the spec sets none."""
        targets = [c for c in self.checks if c.kind == "target"]
        return all(c.passed for c in targets) if targets else None

    def to_dict(self) -> GateResultJson:
        return {
            "passed": self.passed,
            "reasons": self.reasons,
            "checks": [c.to_dict() for c in self.checks],
            "notes": list(self.notes),
            "champion_version": self.champion_version,
        }


def _fmt(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.4f}"


def check_gates(
    gates: GatesSection,
    metrics: Mapping[str, float | None],
    *,
    champion_metrics: Mapping[str, float | None] | None = None,
    champion_version: str | None = None,
    subgroups: Mapping[str, Mapping[str, Mapping[str, float | None]]] | None = None,
) -> GateResult:
    """Evaluate every gate; ``passed`` only when all checks pass."""
    checks: list[GateCheck] = []
    notes: list[str] = []
    for metric, floor in gates.metrics.items():
        value = metrics.get(metric)
        ok = value is not None and value >= floor
        checks.append(
            GateCheck(
                "absolute",
                metric,
                value,
                floor,
                ok,
                f"{metric} = {_fmt(value)} {'≥' if ok else 'is below'} the floor {floor:.4f}",
            )
        )

    if champion_metrics is not None:
        who = f"champion v{champion_version}" if champion_version else "the champion"
        for metric in gates.metrics:
            theirs = champion_metrics.get(metric)
            ours = metrics.get(metric)
            if theirs is None:
                notes.append(f"{metric}: {who} has no value on this test split; regression not checked")
                continue
            threshold = theirs - gates.max_regression
            ok = ours is not None and ours >= threshold
            checks.append(
                GateCheck(
                    "regression",
                    metric,
                    ours,
                    threshold,
                    ok,
                    f"{metric} = {_fmt(ours)} vs {who} {theirs:.4f} on the same test split: "
                    + ("within" if ok else "worse than")
                    + f" the allowed regression of {gates.max_regression:g} (threshold {threshold:.4f})",
                )
            )
    else:
        notes.append("no champion yet: regression check skipped")

    if gates.subgroup_by and gates.subgroup_floor is not None:
        groups = (subgroups or {}).get(gates.subgroup_by)
        if not groups:
            notes.append(f"no test images carry metadata {gates.subgroup_by!r}: subgroup floor not checked")
        else:
            floor = gates.subgroup_floor
            for group, values in sorted(groups.items()):
                for metric in gates.metrics:
                    value = values.get(metric)
                    if value is None:
                        notes.append(
                            f"{gates.subgroup_by}={group}: {metric} undefined (too few cases); skipped"
                        )
                        continue
                    ok = value >= floor
                    checks.append(
                        GateCheck(
                            "subgroup",
                            metric,
                            value,
                            floor,
                            ok,
                            f"{gates.subgroup_by}={group}: {metric} = {value:.4f} "
                            + ("≥" if ok else "is below")
                            + f" the subgroup floor {floor:.4f}",
                            group=group,
                        )
                    )
    gated = all(c.passed for c in checks)
    for metric, target in gates.targets.items():
        value = metrics.get(metric)
        met = value is not None and value >= target
        gap = "" if met or value is None else f" (short by {target - value:.4f})"
        checks.append(
            GateCheck(
                "target",
                metric,
                value,
                target,
                met,
                f"target {metric} = {_fmt(value)} {'≥' if met else 'is below'} {target:.4f}{gap}",
            )
        )
    return GateResult(passed=gated, checks=checks, notes=notes, champion_version=champion_version)
