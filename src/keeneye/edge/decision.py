"""The line decision: a model's instances → OK / DEFECT with the class and confidence the PLC gets.

The thresholds, per value, first found in: ``edge.sku_thresholds`` for the part's SKU (a glossy SKU
may need a higher score before a reflection counts as a scratch); the model's own thresholds when
training calibrated them on the validation split (``extra.decision_calibration``: the OK/DEFECT
threshold the gates were passed with, which the API decides with too); the pipeline spec's
``thresholds.defect_score`` and ``thresholds.defect_min_area``; the manifest's ``score`` and
``min_area``. Pure functions: no I/O, tested on arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from keeneye.domain import Decision, Instances
from keeneye.models import ModelManifest, defect_class_ids
from keeneye.pipelines import PipelineSpec
from keeneye.settings import SkuThresholds


@dataclass(frozen=True)
class LineThresholds:
    """What makes an instance a defect on this line for this SKU."""

    defect_score: float
    defect_min_area: int

    @classmethod
    def for_sku(
        cls,
        spec: PipelineSpec,
        manifest: ModelManifest,
        sku: str,
        overrides: Mapping[str, SkuThresholds] | None = None,
    ) -> LineThresholds:
        """SKU override → the model's calibrated thresholds → spec → manifest, per value."""
        override = (overrides or {}).get(sku)
        calibrated = "decision_calibration" in manifest.extra  # then the manifest's values are the model's
        score = None if calibrated else spec.thresholds.defect_score
        area = None if calibrated else spec.thresholds.defect_min_area
        if override is not None and override.defect_score is not None:
            score = override.defect_score
        if override is not None and override.defect_min_area is not None:
            area = override.defect_min_area
        return cls(
            defect_score=manifest.thresholds.score if score is None else score,
            defect_min_area=manifest.thresholds.min_area if area is None else area,
        )


@dataclass(frozen=True)
class LineVerdict:
    """A model's decision for one part: ``class_id`` 0 and the OK confidence when nothing counts as a
    defect, else the strongest defect's class and score."""

    decision: Decision
    class_id: int
    class_name: str
    confidence: float


def decide_line(instances: Instances, manifest: ModelManifest, thresholds: LineThresholds) -> LineVerdict:
    """DEFECT when a defect-class instance scores ≥ ``defect_score`` with area ≥ ``defect_min_area``.

    OK's confidence is one minus the strongest defect score seen (any size), so a near miss reads as a
    less confident OK on the PLC and in the records.
    """
    defect_ids = defect_class_ids(manifest)
    is_defect = np.isin(instances.class_ids, defect_ids) if len(instances) else np.zeros(0, dtype=bool)
    hit = (
        is_defect
        & (instances.scores >= thresholds.defect_score)
        & (instances.areas >= thresholds.defect_min_area)
    )
    if bool(hit.any()):
        best = int(np.flatnonzero(hit)[int(np.argmax(instances.scores[hit]))])
        class_id = int(instances.class_ids[best])
        name = manifest.class_names[class_id] if class_id < len(manifest.class_names) else str(class_id)
        return LineVerdict(Decision.defect, class_id, name, float(instances.scores[best]))
    strongest = float(instances.scores[is_defect].max()) if bool(is_defect.any()) else 0.0
    return LineVerdict(Decision.ok, 0, "", 1.0 - strongest)
