"""The typed answer: ``finish`` / ``answer_of`` → ``Answer`` → ``to_json`` (the one JSON shape of the
API, the ``.out`` payload, the DB column and the cache) → ``Answer.from_stored`` → the same JSON, byte
for byte."""

from __future__ import annotations

import json

import numpy as np
import pytest

from keeneye.domain import Answer, Decision, ImageFacts, Instances, ModelRef, Prediction, Task
from keeneye.pipelines import PipelineCatalog, answer_of
from keeneye.settings import Settings
from tests.serving_support import species_manifest
from tests.unit.lifecycle.support import line_manifest

IMAGE = ImageFacts(64, 48, ("red", "green", "blue"), "png", {"brightness": 0.25, "contrast": 0.125})
IMAGE_JSON = {
    "width": 64,
    "height": 48,
    "bands": ["red", "green", "blue"],
    "format": "png",
    "quality": {"brightness": 0.25, "contrast": 0.125},
}


@pytest.fixture(scope="module")
def catalog() -> PipelineCatalog:
    return PipelineCatalog(Settings())


def _round_trip(answer: Answer) -> Answer:
    doc = answer.to_json()
    back = Answer.from_stored(json.loads(json.dumps(doc)))
    assert json.dumps(back.to_json()) == json.dumps(doc)  # byte for byte, key order included
    return back


def test_classify_answer(catalog: PipelineCatalog) -> None:
    instances = Instances(
        boxes=np.zeros((5, 4), np.float32),
        scores=np.asarray([0.7, 0.2, 0.05, 0.03, 0.02], np.float32),
        class_ids=np.asarray([1, 0, 3, 4, 2], np.int64),
    )
    prediction = Prediction(instances, ModelRef("species-id", "3"), Task.classify)
    answer = answer_of(prediction, species_manifest(), catalog.get("species-id"), image=IMAGE)
    assert answer.to_json() == {
        "task": "classify",
        "predicted_class": "esox_lucius",
        "predicted_label": "Pike",
        "confidence": 0.7,
        "top_3_predictions": [
            {"class": "esox_lucius", "label": "Pike", "probability": 0.7},
            {"class": "salmo_trutta", "label": "Brown trout", "probability": 0.2},
            {"class": "sander_lucioperca", "label": "Zander", "probability": 0.05},
        ],
        "image": IMAGE_JSON,
    }
    assert list(answer.to_json()) == [
        "task", "predicted_class", "predicted_label", "confidence", "top_3_predictions", "image",
    ]  # fmt: skip
    back = _round_trip(answer)
    assert back.task is Task.classify and back.predicted_class == "esox_lucius"
    assert back.confidence == 0.7 and back.decision is None
    assert back.image == IMAGE
    assert [round(float(s), 6) for s in back.instances.scores] == [0.7, 0.2, 0.05]  # the top 3 stored


def _line_instances() -> Instances:
    masks = np.zeros((2, 48, 64), bool)
    masks[0, 2:5, 3:7] = True  # 12 px, outline through pixel indices (3,2) … (6,4)
    masks[1, 10:20, 30:40] = True  # 100 px
    return Instances(
        boxes=np.asarray([[3, 2, 7, 5], [30, 10, 40, 20]], np.float32),
        scores=np.asarray([0.91234567, 0.55], np.float32),
        class_ids=np.asarray([1, 2], np.int64),
        masks=masks,
    )


def test_segment_answer_with_masks_and_ok_defect_decision(catalog: PipelineCatalog) -> None:
    spec = catalog.get("line-inspection")
    assert spec.decision.kind == "ok-defect"
    prediction = Prediction(_line_instances(), ModelRef("line-inspection", "1"), Task.segment)
    answer = answer_of(prediction, line_manifest(), spec, image=IMAGE)
    assert answer.decision is Decision.defect
    assert answer.to_json() == {
        "task": "segment",
        "instances": [
            {
                "class": "scratch",
                "label": "scratch",
                "score": 0.912346,
                "box": [3.0, 2.0, 7.0, 5.0],
                "area_px": 12.0,
                "polygon": [[3.0, 2.0], [3.0, 4.0], [6.0, 4.0], [6.0, 2.0]],
            },
            {
                "class": "dent",
                "label": "dent",
                "score": 0.55,
                "box": [30.0, 10.0, 40.0, 20.0],
                "area_px": 100.0,
                "polygon": [[30.0, 10.0], [30.0, 19.0], [39.0, 19.0], [39.0, 10.0]],
            },
        ],
        "count": 2,
        "confidence": 0.912346,
        "decision": "DEFECT",
        "image": IMAGE_JSON,
    }
    back = _round_trip(answer)
    assert back.decision is Decision.defect and back.class_names == ["scratch", "dent"]
    assert back.instances.masks is None  # masks are not stored: their outlines come back as polygons
    assert back.instances.polygons == [
        [[3.5, 2.5, 3.5, 4.5, 6.5, 4.5, 6.5, 2.5]],
        [[30.5, 10.5, 30.5, 19.5, 39.5, 19.5, 39.5, 10.5]],
    ]
    assert back.areas_px is not None and back.areas_px.tolist() == [12.0, 100.0]


def test_ok_answer_without_instances(catalog: PipelineCatalog) -> None:
    spec = catalog.get("line-inspection")
    prediction = Prediction(Instances.empty((48, 64)), ModelRef("line-inspection", "1"), Task.segment)
    answer = answer_of(prediction, line_manifest(), spec)
    assert answer.to_json() == {
        "task": "segment",
        "instances": [],
        "count": 0,
        "confidence": None,
        "decision": "OK",
    }
    back = _round_trip(answer)
    assert back.decision is Decision.ok and back.confidence is None and len(back.instances) == 0


def test_detect_answer_without_masks_or_decision(catalog: PipelineCatalog) -> None:
    spec = catalog.get("crop-health")
    assert spec.decision.kind != "ok-defect"
    instances = Instances(
        boxes=np.asarray([[1.5, 2.25, 10.125, 20.0]], np.float32),
        scores=np.asarray([0.5], np.float32),
        class_ids=np.asarray([1], np.int64),
    )
    prediction = Prediction(instances, ModelRef("line-inspection", "1"), Task.detect)
    answer = answer_of(prediction, line_manifest(), spec)
    doc = answer.to_json()
    assert doc == {
        "task": "detect",
        "instances": [
            # area: the box's, 8.625 × 17.75 (the box shows 2 decimals, the area is exact)
            {
                "class": "scratch",
                "label": "scratch",
                "score": 0.5,
                "box": [1.5, 2.25, 10.12, 20.0],
                "area_px": 153.09375,
            }
        ],
        "count": 1,
        "confidence": 0.5,
    }
    back = _round_trip(answer)
    assert back.instances.polygons is None and back.outlines is None


def test_from_stored_keeps_the_given_class_list_and_reads_defensively() -> None:
    classes = answer_of(
        Prediction(Instances.empty(), ModelRef("m", "1"), Task.detect),
        line_manifest(),
        PipelineCatalog(Settings()).get("crop-health"),
    ).classes
    doc = {
        "task": "detect",
        "instances": [
            {"class": "dent", "label": "dent", "score": 0.8, "box": [0, 0, 2, 2], "area_px": 4.0},
            {"class": "new", "score": 0.4, "box": [0, 0, 1, 1]},  # unknown class, no label, no area
            {"class": "dent", "box": [0, 0, "x", 1]},  # malformed box: skipped
            "not an instance",
        ],
    }
    back = Answer.from_stored(doc, classes)
    assert back.instances.class_ids.tolist() == [2, 3]  # the manifest's index; "new" appended
    assert [c.name for c in back.classes] == ["background", "scratch", "dent", "new"]
    assert back.areas_px is not None and back.areas_px.tolist() == [4.0, 1.0]  # box area when missing
    assert Answer.from_stored({}).to_json() == {
        "task": "detect",
        "instances": [],
        "count": 0,
        "confidence": None,
    }
