"""The line decision: which thresholds apply (SKU → calibrated model → spec → manifest) and what the
PLC gets."""

from __future__ import annotations

import numpy as np
import pytest

from keeneye.domain import Decision, Instances
from keeneye.edge import LineThresholds, decide_line
from keeneye.models import ModelManifest
from keeneye.pipelines import PipelineCatalog, PipelineSpec
from keeneye.settings import Settings, SkuThresholds

MANIFEST = ModelManifest.parse(
    {
        "name": "line-inspection",
        "task": "segment",
        "output_format": "seg-logits",
        "input": {"width": 32, "height": 32},
        "classes": ["background", "scratch", "dent"],
        "background_class": 0,
        "thresholds": {"score": 0.3, "min_area": 2},
    }
)


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> PipelineSpec:
    return PipelineCatalog(Settings(home=tmp_path_factory.mktemp("home"))).get("line-inspection")


def instances(*rows: tuple[int, float, int]) -> Instances:
    """(class id, score, area) rows as square masks of that many pixels."""
    masks = np.zeros((len(rows), 32, 32), dtype=bool)
    for i, (_, _, area) in enumerate(rows):
        masks[i].flat[:area] = True
    return Instances(
        boxes=np.zeros((len(rows), 4), dtype=np.float32),
        scores=np.array([r[1] for r in rows], dtype=np.float32),
        class_ids=np.array([r[0] for r in rows], dtype=np.int64),
        masks=masks,
    )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (None, (0.5, 16)),  # the spec's thresholds.defect_score / defect_min_area
        (SkuThresholds(defect_min_area=4), (0.5, 4)),
        (SkuThresholds(defect_score=0.9), (0.9, 16)),
        (SkuThresholds(defect_score=0.2, defect_min_area=0), (0.2, 0)),
    ],
)
def test_sku_overrides_win_value_by_value(
    spec: PipelineSpec, override: SkuThresholds | None, expected: tuple[float, int]
) -> None:
    overrides = {} if override is None else {"glossy": override}
    th = LineThresholds.for_sku(spec, MANIFEST, "glossy", overrides)
    assert (th.defect_score, th.defect_min_area) == expected
    other = LineThresholds.for_sku(spec, MANIFEST, "matte", overrides)
    assert (other.defect_score, other.defect_min_area) == (0.5, 16)  # another SKU keeps the spec's


def test_without_spec_values_the_manifest_decides(spec: PipelineSpec) -> None:
    bare = spec.model_copy(
        update={
            "thresholds": spec.thresholds.model_copy(update={"defect_score": None, "defect_min_area": None})
        }
    )
    th = LineThresholds.for_sku(bare, MANIFEST, "")
    assert (th.defect_score, th.defect_min_area) == (0.3, 2)


def test_a_calibrated_model_decides_with_its_own_thresholds_unless_the_sku_says_otherwise(
    spec: PipelineSpec,
) -> None:
    """Training calibrated 0.2 / 4 px on the validation split (what the gates passed with and what
    the API decides with): the spec's 0.5 / 16 must not undo it on the line; a SKU override still wins."""
    calibrated = MANIFEST.model_copy(
        update={
            "thresholds": MANIFEST.thresholds.model_copy(update={"score": 0.2, "min_area": 4}),
            "extra": {**MANIFEST.extra, "decision_calibration": {"mask": 0.2, "min_area": 4}},
        }
    )
    th = LineThresholds.for_sku(spec, calibrated, "matte")
    assert (th.defect_score, th.defect_min_area) == (0.2, 4)
    glossy = LineThresholds.for_sku(spec, calibrated, "glossy", {"glossy": SkuThresholds(defect_score=0.6)})
    assert (glossy.defect_score, glossy.defect_min_area) == (0.6, 4)


@pytest.mark.parametrize(
    ("rows", "thresholds", "expected"),
    [
        ([], (0.5, 16), (Decision.ok, 0, "", 1.0)),
        ([(1, 0.9, 36)], (0.5, 16), (Decision.defect, 1, "scratch", 0.9)),
        ([(1, 0.9, 9)], (0.5, 16), (Decision.ok, 0, "", 0.1)),  # too small: OK, less sure
        ([(1, 0.9, 9)], (0.5, 4), (Decision.defect, 1, "scratch", 0.9)),  # a SKU's smaller min area
        ([(1, 0.4, 36)], (0.5, 16), (Decision.ok, 0, "", 0.6)),
        ([(1, 0.6, 40), (2, 0.8, 20)], (0.5, 16), (Decision.defect, 2, "dent", 0.8)),  # the strongest
        ([(0, 0.99, 500)], (0.5, 16), (Decision.ok, 0, "", 1.0)),  # background is never a defect
    ],
)
def test_decide_line(
    rows: list[tuple[int, float, int]],
    thresholds: tuple[float, int],
    expected: tuple[Decision, int, str, float],
) -> None:
    verdict = decide_line(instances(*rows), MANIFEST, LineThresholds(*thresholds))
    got = (verdict.decision, verdict.class_id, verdict.class_name, round(verdict.confidence, 4))
    assert got == expected
