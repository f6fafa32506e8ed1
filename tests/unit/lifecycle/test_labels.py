"""The labelling loop on a real SQLite file and a directory object store: review reasons, the queue,
COCO / Label Studio export, and the import back as feedback (validated like the feedback API)."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keeneye.domain import NotFound
from keeneye.lifecycle import (
    LabelSchema,
    audit_draw,
    enqueue,
    export_labels,
    import_labels,
    latest_answers,
    review_queue,
    review_reasons,
)
from keeneye.models import ModelManifest
from keeneye.pipelines import PipelineCatalog, PipelineSpec
from keeneye.settings import Settings
from keeneye.store import ObjectStore, ResultsDB, open_object_store, open_results_db
from keeneye.training import load_coco, validate
from tests.unit.lifecycle.support import (
    SPECIES,
    Stored,
    as_answer,
    crop_manifest,
    line_manifest,
    png_bytes,
    segment_result,
    species_jpeg,
    species_manifest,
    species_result,
    store_answer,
)

# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def catalog(settings: Settings) -> PipelineCatalog:
    return PipelineCatalog(settings)


@pytest.fixture
def db(settings: Settings) -> ResultsDB:
    return open_results_db(settings)


@pytest.fixture
def objects(settings: Settings) -> ObjectStore:
    return open_object_store(settings)


def manifests_of(*manifests: ModelManifest) -> Callable[[str, str], ModelManifest]:
    by_name = {m.name: m for m in manifests}

    def lookup(name: str, version: str) -> ModelManifest:
        return by_name[name]

    return lookup


def line_answers(db: ResultsDB, objects: ObjectStore, spec: PipelineSpec) -> list[Stored]:
    """Four line-inspection answers, each queued for low confidence (scores near 0.5)."""
    m = line_manifest()
    answers = [
        [(1, (8, 8, 30, 24), 0.55), (2, (36, 30, 60, 56), 0.58)],
        [(2, (10, 40, 40, 60), 0.52)],
        [(1, (20, 5, 50, 15), 0.58), (1, (2, 50, 14, 62), 0.57)],
        [(2, (0, 0, 24, 24), 0.51)],  # touches the image border
    ]
    stored = []
    for seed, regions in enumerate(answers):
        s = store_answer(db, objects, spec.name, segment_result(spec, m, regions), png_bytes(seed))
        enqueue(
            db,
            s.observation_id,
            spec.name,
            review_reasons(spec, as_answer(s.result), rng_key=s.observation_id),
        )
        stored.append(s)
    return stored


def expected_label(result: dict[str, Any], *, decision: bool) -> dict[str, Any]:
    """What the model said, in the feedback API's shape (COCO geometry, polygons on pixel edges)."""
    if result["task"] == "classify":
        return {"class": result["predicted_class"]}
    instances = []
    for inst in result["instances"]:
        x1, y1, x2, y2 = inst["box"]
        item: dict[str, Any] = {
            "class": inst["class"],
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
        }
        if len(inst["polygon"]) >= 3:
            item["segmentation"] = [[v + 0.5 for xy in inst["polygon"] for v in xy]]
        instances.append(item)
    label: dict[str, Any] = {"instances": instances}
    if decision:
        label["decision"] = result["decision"]
    return label


def feedback_labels(db: ResultsDB, stored: list[Stored]) -> list[list[dict[str, Any]]]:
    return [[f.label for f in db.feedback_for(s.observation_id)] for s in stored]


# --------------------------------------------------------------------------------------------------
# review reasons
# --------------------------------------------------------------------------------------------------


def _seg(scores: list[float], decision: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "task": "segment",
        "instances": [{"class": "scratch", "score": s, "box": [0, 0, 4, 4]} for s in scores],
    }
    if decision:
        result["decision"] = decision
    return result


@pytest.mark.parametrize(
    ("pipeline", "result", "expected"),
    [
        # classify: confidence below 0.6 → priority 1 − confidence
        ("species-id", species_result([0.5, 0.3, 0.1, 0.05, 0.05]), [("low_confidence", 0.5)]),
        ("species-id", species_result([0.66, 0.0, 0.0, 0.0, 0.34]), []),
        # classify: top-1/top-2 margin 0.05 < 0.1 → priority 0.95 (the larger of the two)
        ("species-id", species_result([0.5, 0.45, 0.05, 0.0, 0.0]), [("low_confidence", 0.95)]),
        ("species-id", species_result([0.62, 0.0, 0.0, 0.0, 0.38]), []),
        ("species-id", species_result([0.61, 0.35, 0.04, 0.0, 0.0]), []),
        ("species-id", species_result([0.9, 0.05, 0.05, 0.0, 0.0]), []),
        # ok-defect: the top instance score within 0.1 of the 0.5 threshold → 1 − distance / band
        ("line-inspection", _seg([0.55], "DEFECT"), [("low_confidence", 0.5)]),
        ("line-inspection", _seg([0.55, 0.95], "DEFECT"), []),  # the decision rests on the sure one
        ("line-inspection", _seg([0.5], "DEFECT"), [("low_confidence", 1.0)]),
        ("line-inspection", _seg([0.93], "DEFECT"), []),
        ("line-inspection", _seg([], "OK"), []),
        # segmentation without a decision: any instance below 0.6 → 1 − lowest score
        ("crop-health", _seg([0.9, 0.55]), [("low_confidence", 0.45)]),
        ("crop-health", _seg([0.9, 0.7]), []),
        ("species-id", None, []),
    ],
)
def test_review_reasons(
    catalog: PipelineCatalog, pipeline: str, result: dict[str, Any] | None, expected: list[tuple[str, float]]
) -> None:
    reasons = review_reasons(
        catalog.get(pipeline), result and as_answer(result), audit_share=0.0, rng_key="obs-1"
    )
    assert [(r, p) for r, p, _ in reasons] == [(r, pytest.approx(p)) for r, p in expected]


def test_review_reason_details_name_the_cause(catalog: PipelineCatalog) -> None:
    spec = catalog.get("species-id")
    (_, _, details), *_ = review_reasons(
        spec, as_answer(species_result([0.5, 0.45, 0.05, 0.0, 0.0])), audit_share=0, rng_key="x"
    )
    assert details == {"confidence": 0.5, "threshold": 0.6, "margin": 0.05, "min_margin": 0.1}
    (_, _, details), *_ = review_reasons(
        catalog.get("line-inspection"), as_answer(_seg([0.55], "DEFECT")), audit_share=0, rng_key="x"
    )
    assert details == {"score": 0.55, "threshold": 0.5, "band": 0.1, "decision": "DEFECT"}


def test_audit_sample_is_a_deterministic_share(catalog: PipelineCatalog) -> None:
    spec = catalog.get("species-id")
    sure = as_answer(species_result([0.9, 0.05, 0.05, 0.0, 0.0]))
    keys = [f"observation-{i}" for i in range(20_000)]
    picked = [k for k in keys if review_reasons(spec, sure, audit_share=0.02, rng_key=k)]
    assert 300 <= len(picked) <= 500  # 2 % of 20 000 = 400; a hash, not a coin: always the same set
    assert picked == [k for k in keys if audit_draw(k) < 0.02]
    assert review_reasons(spec, sure, audit_share=0.02, rng_key=picked[0]) == [
        ("audit", 0.0, {"share": 0.02})
    ]
    assert all(review_reasons(spec, sure, audit_share=1.0, rng_key=k) for k in keys[:50])
    assert not any(review_reasons(spec, sure, audit_share=0.0, rng_key=k) for k in keys[:50])
    with pytest.raises(ValueError, match="audit_share"):
        review_reasons(spec, sure, audit_share=1.5, rng_key="x")


# --------------------------------------------------------------------------------------------------
# enqueue and the queue
# --------------------------------------------------------------------------------------------------


def test_enqueue_is_idempotent_and_feedback_resolves(
    db: ResultsDB, objects: ObjectStore, catalog: PipelineCatalog
) -> None:
    spec = catalog.get("species-id")
    s = store_answer(
        db, objects, spec.name, species_result([0.5, 0.3, 0.1, 0.05, 0.05]), species_jpeg(1), fmt="jpeg"
    )
    low = ("low_confidence", 0.5, {"confidence": 0.5})
    assert enqueue(db, s.observation_id, spec.name, [low]) == 1
    assert enqueue(db, s.observation_id, spec.name, [low, low]) == 0  # a repeated reason is ignored
    assert enqueue(db, s.observation_id, spec.name, [("drift", 0.3, {"psi": 0.4}), low]) == 1
    assert enqueue(db, s.observation_id, spec.name, []) == 0
    [entry] = review_queue(db, spec.name)
    assert (entry.reasons, entry.priority) == (("low_confidence", "drift"), 0.5)
    assert entry.details == {"low_confidence": {"confidence": 0.5}, "drift": {"psi": 0.4}}

    db.add_feedback(s.observation_id, {"class": "esox_lucius"}, "review")
    assert review_queue(db, spec.name) == []
    [resolved] = review_queue(db, spec.name, include_resolved=True)
    assert resolved.resolved_at is not None
    # answered by a person: another reason does not bring it back
    assert enqueue(db, s.observation_id, spec.name, [("audit", 0.0, {})]) == 0
    with pytest.raises(NotFound, match="does not exist"):
        enqueue(db, "0" * 32, spec.name, [low])


def test_queue_orders_by_priority_with_the_answer_and_image(
    db: ResultsDB, objects: ObjectStore, catalog: PipelineCatalog
) -> None:
    spec = catalog.get("species-id")
    stored = [
        store_answer(db, objects, spec.name, species_result(p), species_jpeg(i), fmt="jpeg")
        for i, p in enumerate(
            [
                [0.55, 0.4, 0.05, 0, 0],
                [0.3, 0.25, 0.2, 0.15, 0.1],
                [0.9, 0.1, 0, 0, 0],
                [0.45, 0.3, 0.25, 0, 0],
            ]
        )
    ]
    for s in stored:
        enqueue(
            db,
            s.observation_id,
            spec.name,
            review_reasons(spec, as_answer(s.result), audit_share=0, rng_key="k"),
        )
    enqueue(db, stored[2].observation_id, spec.name, [("audit", 0.0, {"share": 0.02})])
    queue = review_queue(db, spec.name)
    # priorities: 1 − 0.3 = 0.7 (and margin 0.05 → 0.95), 0.55 → 0.45 / margin .15, 0.45 → 0.55, audit 0
    assert [e.observation_id for e in queue] == [stored[i].observation_id for i in (1, 3, 0, 2)]
    assert [e.priority for e in queue] == [0.95, 0.55, 0.45, 0.0]
    assert queue[0].prediction == stored[1].result and queue[0].model_version == "1"
    assert queue[0].object_key is not None and objects.get(queue[0].object_key) == species_jpeg(1)
    assert queue[-1].reasons == ("audit",)
    assert [e.observation_id for e in review_queue(db, spec.name, limit=2)] == [
        stored[1].observation_id,
        stored[3].observation_id,
    ]
    assert review_queue(db, "line-inspection") == []
    assert [e.observation_id for e in latest_answers(db, spec.name, limit=2)] == [
        stored[3].observation_id,
        stored[2].observation_id,
    ]
    with pytest.raises(ValueError, match="limit"):
        review_queue(db, spec.name, limit=0)
    # answered items leave the queue; include_resolved lists them after the open ones, newest first
    db.add_feedback(stored[3].observation_id, {"class": "esox_lucius"}, "review")
    db.add_feedback(stored[1].observation_id, {"class": "esox_lucius"}, "review")
    assert [e.observation_id for e in review_queue(db, spec.name)] == [
        stored[i].observation_id for i in (0, 2)
    ]
    everything = review_queue(db, spec.name, include_resolved=True)
    assert [e.observation_id for e in everything] == [stored[i].observation_id for i in (0, 2, 1, 3)]
    assert [e.resolved_at is None for e in everything] == [True, True, False, False]
    assert len(review_queue(db, spec.name, limit=3, include_resolved=True)) == 3


def test_queue_pages_past_many_reasons_per_observation(
    db: ResultsDB, objects: ObjectStore, catalog: PipelineCatalog
) -> None:
    """One observation with every reason still counts once; the limit is in observations."""
    spec = catalog.get("species-id")
    stored = [
        store_answer(
            db, objects, spec.name, species_result([0.5, 0.2, 0.1, 0.1, 0.1]), species_jpeg(i), fmt="jpeg"
        )
        for i in range(3)
    ]
    for rank, s in enumerate(stored):
        items = [
            (r, 0.9 - rank * 0.1 - k * 0.01, {})
            for k, r in enumerate(("low_confidence", "drift", "disagreement", "audit"))
        ]
        enqueue(db, s.observation_id, spec.name, items)
    queue = review_queue(db, spec.name, limit=2)
    assert [e.observation_id for e in queue] == [stored[0].observation_id, stored[1].observation_id]
    assert all(e.reasons == ("low_confidence", "drift", "disagreement", "audit") for e in queue)


# --------------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------------


def test_export_coco_segmentation_loads_everywhere(
    db: ResultsDB, objects: ObjectStore, catalog: PipelineCatalog, tmp_path: Path
) -> None:
    spec = catalog.get("line-inspection")
    stored = line_answers(db, objects, spec)
    schema = LabelSchema.from_manifest(spec, line_manifest(), model_version="1")
    report = export_labels(db, objects, spec.name, tmp_path / "out", schema=schema, fmt="coco")
    assert (report.n_images, report.skipped) == (4, [])
    doc = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert doc["categories"] == [
        {"id": 1, "name": "scratch", "supercategory": "", "label": "scratch"},
        {"id": 2, "name": "dent", "supercategory": "", "label": "dent"},
    ]
    queue = review_queue(db, spec.name)
    assert [im["keeneye_observation_id"] for im in doc["images"]] == [e.observation_id for e in queue]
    first = next(im for im in doc["images"] if im["keeneye_observation_id"] == stored[0].observation_id)
    assert first["file_name"] == f"{stored[0].content_hash}.png" and first["keeneye_decision"] == "DEFECT"
    anns = [a for a in doc["annotations"] if a["image_id"] == first["id"]]
    inst = stored[0].result["instances"][0]
    assert anns[0]["score"] == inst["score"] and anns[0]["area"] == inst["area_px"]
    x1, y1, x2, y2 = inst["box"]
    assert anns[0]["bbox"] == [x1, y1, x2 - x1, y2 - y1]
    assert anns[0]["segmentation"] == [[v + 0.5 for xy in inst["polygon"] for v in xy]]
    assert report.n_annotations == len(doc["annotations"]) == 6

    ds = load_coco(tmp_path / "out")
    assert validate(ds, task="segment").errors == []
    assert ds.images[0].path.read_bytes() == objects.get(queue[0].object_key or "")
    masks = ds.images[0].masks()  # the polygons rasterise where the model's masks were
    assert masks.shape == (2, 64, 64) or masks.shape[0] == len(ds.images[0].annotations)
    from pycocotools.coco import COCO

    coco = COCO(str(tmp_path / "out" / "annotations.json"))
    assert len(coco.getImgIds()) == 4 and len(coco.getAnnIds()) == 6
    mask = coco.annToMask(coco.loadAnns(coco.getAnnIds(imgIds=[first["id"]]))[0])
    assert abs(int(mask.sum()) - inst["area_px"]) <= 0.15 * inst["area_px"]
    # deterministic: the same state exports the same bytes
    export_labels(db, objects, spec.name, tmp_path / "again", schema=schema, fmt="coco")
    assert (tmp_path / "again" / "annotations.json").read_bytes() == (
        tmp_path / "out" / "annotations.json"
    ).read_bytes()


def test_export_classification_and_label_studio(
    db: ResultsDB, objects: ObjectStore, catalog: PipelineCatalog, tmp_path: Path
) -> None:
    spec = catalog.get("species-id")
    s = store_answer(
        db, objects, spec.name, species_result([0.5, 0.3, 0.1, 0.05, 0.05]), species_jpeg(3), fmt="jpeg"
    )
    enqueue(
        db, s.observation_id, spec.name, review_reasons(spec, as_answer(s.result), rng_key=s.observation_id)
    )
    schema = LabelSchema.from_manifest(spec, species_manifest(), model_version="1")

    export_labels(db, objects, spec.name, tmp_path / "coco", schema=schema, fmt="coco")
    doc = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    [ann] = doc["annotations"]
    assert ann["bbox"] == [0.0, 0.0, 48.0, 48.0] and ann["category_id"] == 1 and ann["score"] == 0.5
    assert [c["name"] for c in doc["categories"]] == [n for n, _ in SPECIES]
    assert load_coco(tmp_path / "coco").label_of(load_coco(tmp_path / "coco").images[0]) == SPECIES[0][0]

    report = export_labels(
        db,
        objects,
        spec.name,
        tmp_path / "ls",
        schema=schema,
        fmt="label-studio",
        image_root="/data/local-files/?d=ls/images/",
    )
    assert [p.name for p in report.files] == ["tasks.json", "label_config.xml"]
    [task] = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert task["data"]["image"] == f"/data/local-files/?d=ls/images/{s.content_hash}.jpg"
    assert task["data"]["keeneye_observation_id"] == s.observation_id
    assert task["predictions"] == [
        {
            "model_version": "1",
            "score": 0.5,
            "result": [
                {
                    "from_name": "class",
                    "to_name": "image",
                    "type": "choices",
                    "value": {"choices": [SPECIES[0][0]]},
                }
            ],
        }
    ]
    config = ET.fromstring((tmp_path / "ls" / "label_config.xml").read_text())
    choices = config.find("Choices")
    assert choices is not None and choices.get("name") == "class"
    assert [c.get("value") for c in choices] == [n for n, _ in SPECIES]
    assert (tmp_path / "ls" / "images" / f"{s.content_hash}.jpg").read_bytes() == species_jpeg(3)


def test_export_skips_what_cannot_be_labelled(
    db: ResultsDB, objects: ObjectStore, catalog: PipelineCatalog, tmp_path: Path
) -> None:
    spec = catalog.get("species-id")
    gone = store_answer(
        db, objects, spec.name, species_result([0.5, 0.3, 0.1, 0.05, 0.05]), species_jpeg(4), fmt="jpeg"
    )
    twin = store_answer(
        db, objects, spec.name, species_result([0.4, 0.3, 0.2, 0.05, 0.05]), species_jpeg(5), fmt="jpeg"
    )
    first = store_answer(
        db, objects, spec.name, species_result([0.3, 0.3, 0.2, 0.1, 0.1]), species_jpeg(5), fmt="jpeg"
    )
    for s in (gone, twin, first):
        enqueue(
            db,
            s.observation_id,
            spec.name,
            review_reasons(spec, as_answer(s.result), audit_share=0, rng_key="k"),
        )
    gone_key = review_queue(db, spec.name)[-1].object_key or ""
    objects.delete(gone_key)  # retention removed one image
    schema = LabelSchema.from_manifest(spec, species_manifest())
    report = export_labels(db, objects, spec.name, tmp_path / "out", schema=schema, fmt="coco")
    assert report.n_images == 1
    assert report.skipped == [
        (twin.observation_id, f"same image bytes as an earlier item ({twin.content_hash}.jpg)"),
        (
            gone.observation_id,
            f"image {gone_key} is no longer in the object store (retention?)",
        ),
    ]
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == [f"{first.content_hash}.jpg"]


# --------------------------------------------------------------------------------------------------
# import and the round trip
# --------------------------------------------------------------------------------------------------


def test_coco_round_trip_segmentation(
    db: ResultsDB, objects: ObjectStore, catalog: PipelineCatalog, tmp_path: Path
) -> None:
    spec = catalog.get("line-inspection")
    stored = line_answers(db, objects, spec)
    schema = LabelSchema.from_manifest(spec, line_manifest(), model_version="1")
    export_labels(db, objects, spec.name, tmp_path / "out", schema=schema, fmt="coco")

    report = import_labels(
        db,
        spec.name,
        tmp_path / "out",
        catalog=catalog,
        manifests=manifests_of(line_manifest()),
        author="alice",
    )
    assert report.ok, [p.one_line() for p in report.problems]
    assert (report.n_images, report.written, report.unchanged) == (4, 4, 0)
    assert feedback_labels(db, stored) == [[expected_label(s.result, decision=True)] for s in stored]
    assert review_queue(db, spec.name) == []  # every item answered
    assert {f.author for s in stored for f in db.feedback_for(s.observation_id)} == {"alice"}
    for s in stored:  # the outline is the model's, within 1 px
        [label] = [f.label for f in db.feedback_for(s.observation_id)]
        for inst, mine in zip(s.result["instances"], label["instances"], strict=True):
            flat = mine["segmentation"][0]
            for (x, y), (fx, fy) in zip(
                inst["polygon"], zip(flat[0::2], flat[1::2], strict=True), strict=True
            ):
                assert math.hypot(fx - x, fy - y) <= 1.0
    again = import_labels(
        db,
        spec.name,
        tmp_path / "out",
        catalog=catalog,
        manifests=manifests_of(line_manifest()),
        author="alice",
    )
    assert (again.written, again.unchanged) == (0, 4)  # importing twice stores nothing twice


def test_coco_round_trip_classification_and_hash_fallback(
    db: ResultsDB, objects: ObjectStore, catalog: PipelineCatalog, tmp_path: Path
) -> None:
    spec = catalog.get("species-id")
    stored = [
        store_answer(db, objects, spec.name, species_result(p), species_jpeg(i), fmt="jpeg")
        for i, p in enumerate([[0.5, 0.3, 0.1, 0.05, 0.05], [0.1, 0.2, 0.5, 0.15, 0.05]])
    ]
    for s in stored:
        enqueue(db, s.observation_id, spec.name, [("audit", 0.0, {})])
    schema = LabelSchema.from_manifest(spec, species_manifest(), model_version="1")
    export_labels(db, objects, spec.name, tmp_path / "out", schema=schema, fmt="coco")
    path = tmp_path / "out" / "annotations.json"
    doc = json.loads(path.read_text())
    del doc["images"][1]["keeneye_observation_id"]  # a tool dropped the field: the file name maps it
    doc["annotations"][0]["category_id"] = 4  # a person corrected the first image
    path.write_text(json.dumps(doc))
    report = import_labels(
        db, spec.name, path, catalog=catalog, manifests=manifests_of(species_manifest()), author=None
    )
    assert report.ok and report.written == 2
    by_obs = {im.get("keeneye_observation_id", stored[1].observation_id): im for im in doc["images"]}
    assert by_obs[stored[0].observation_id]["id"] == 1
    assert feedback_labels(db, stored) == [[{"class": SPECIES[3][0]}], [{"class": SPECIES[2][0]}]]


def test_label_studio_round_trip(
    db: ResultsDB, objects: ObjectStore, catalog: PipelineCatalog, tmp_path: Path
) -> None:
    """Export tasks, accept every prediction as the annotation (what a reviewer does in Label Studio),
    export them as Label Studio JSON, import: the model's answers again."""
    spec = catalog.get("line-inspection")
    stored = line_answers(db, objects, spec)
    schema = LabelSchema.from_manifest(spec, line_manifest(), model_version="1")
    export_labels(db, objects, spec.name, tmp_path / "ls", schema=schema, fmt="label-studio")
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    for n, task in enumerate(tasks):
        for item in task["predictions"][0]["result"]:
            if item["type"] == "polygonlabels":
                assert all(0 <= v <= 100 for xy in item["value"]["points"] for v in xy)
        task["id"] = n + 1
        task["annotations"] = [
            {"id": n + 1, "was_cancelled": False, "result": task.pop("predictions")[0]["result"]}
        ]
    tasks[0]["annotations"].insert(0, {"id": 99, "was_cancelled": True, "result": []})
    tasks.append({"id": 9, "data": {"image": "images/unlabelled.png"}, "annotations": []})
    (tmp_path / "export.json").write_text(json.dumps(tasks))

    report = import_labels(
        db,
        spec.name,
        tmp_path / "export.json",
        catalog=catalog,
        manifests=manifests_of(line_manifest()),
        author="bob",
    )
    assert report.ok, [p.one_line() for p in report.problems]
    assert (report.written, report.not_labelled) == (4, ["unlabelled.png"])
    for s, labels in zip(stored, feedback_labels(db, stored), strict=True):
        want = expected_label(s.result, decision=True)
        [got] = labels
        assert got["decision"] == want["decision"]
        assert [i["class"] for i in got["instances"]] == [i["class"] for i in want["instances"]]
        for g, w in zip(got["instances"], want["instances"], strict=True):
            # Label Studio keeps no box beside a polygon: it is the polygon's, within a pixel
            assert g["bbox"] == pytest.approx(w["bbox"], abs=1.0)
            assert g["segmentation"][0] == pytest.approx(w["segmentation"][0], abs=0.01)


def _broken_export(
    db: ResultsDB, objects: ObjectStore, catalog: PipelineCatalog, tmp_path: Path
) -> tuple[list[Stored], Path, dict[str, Any]]:
    spec = catalog.get("line-inspection")
    stored = line_answers(db, objects, spec)
    schema = LabelSchema.from_manifest(spec, line_manifest(), model_version="1")
    export_labels(db, objects, spec.name, tmp_path / "out", schema=schema, fmt="coco")
    path = tmp_path / "out" / "annotations.json"
    doc = json.loads(path.read_text())
    by_obs = {im["keeneye_observation_id"]: im for im in doc["images"]}
    ann_of = {im["id"]: [a for a in doc["annotations"] if a["image_id"] == im["id"]] for im in doc["images"]}
    # image 0: a class the model does not know; image 1: an observation that does not exist;
    # image 2: a polygon of two points
    doc["categories"].append({"id": 3, "name": "rust"})
    ann_of[by_obs[stored[0].observation_id]["id"]][1]["category_id"] = 3
    by_obs[stored[1].observation_id]["keeneye_observation_id"] = "f" * 32
    ann_of[by_obs[stored[2].observation_id]["id"]][0]["segmentation"] = [[1.0, 1.0, 5.0, 5.0]]
    path.write_text(json.dumps(doc))
    return (
        stored,
        path,
        {
            "files": {s.observation_id: "images/" + by_obs[s.observation_id]["file_name"] for s in stored},
            "ann": ann_of,
            "by_obs": by_obs,
        },
    )


def test_import_reports_each_bad_image_and_writes_nothing(
    db: ResultsDB, objects: ObjectStore, catalog: PipelineCatalog, tmp_path: Path
) -> None:
    stored, path, info = _broken_export(db, objects, catalog, tmp_path)
    files = info["files"]
    rust_ann = info["ann"][info["by_obs"][stored[0].observation_id]["id"]][1]["id"]
    bad_ann = info["ann"][info["by_obs"][stored[2].observation_id]["id"]][0]["id"]
    report = import_labels(
        db, "line-inspection", path, catalog=catalog, manifests=manifests_of(line_manifest()), author="a"
    )
    assert not report.ok and report.written == 0
    codes = {p.file: p.code for p in report.errors}
    assert len(report.errors) == 3 and codes == {
        files[stored[0].observation_id]: "unknown_class",
        files[stored[1].observation_id]: "unknown_observation",
        files[stored[2].observation_id]: "bad_geometry",
    }
    messages = [
        next(p.message for p in report.errors if p.file == files[s.observation_id]) for s in stored[:3]
    ]
    assert messages[0].startswith(f"annotation {rust_ann}.class 'rust' is not a class of line-inspection")
    assert messages[1] == (
        f"keeneye_observation_id '{'f' * 32}' is not an observation of pipeline 'line-inspection'"
    )
    assert messages[2] == f"annotation {bad_ann}: polygon 0 has 2 points; a polygon needs at least 3"
    assert feedback_labels(db, stored) == [[], [], [], []]  # nothing written, not even the good image

    skipped = import_labels(
        db,
        "line-inspection",
        path,
        catalog=catalog,
        manifests=manifests_of(line_manifest()),
        author="a",
        skip_invalid=True,
    )
    assert skipped.written == 1 and skipped.skipped == sorted(files[s.observation_id] for s in stored[:3])
    assert feedback_labels(db, stored) == [[], [], [], [expected_label(stored[3].result, decision=True)]]


def test_import_refuses_broken_files_with_one_line(
    db: ResultsDB, catalog: PipelineCatalog, tmp_path: Path
) -> None:
    from keeneye.domain import InvalidInput

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidInput, match=r"bad\.json is not valid JSON"):
        import_labels(
            db, "species-id", bad, catalog=catalog, manifests=manifests_of(species_manifest()), author=None
        )
    with pytest.raises(InvalidInput, match="does not exist"):
        import_labels(
            db, "species-id", tmp_path / "nowhere", catalog=catalog, manifests=manifests_of(), author=None
        )
    (tmp_path / "tasks.json").write_text(json.dumps([{"no": "data"}]))
    with pytest.raises(InvalidInput, match="task 0 is not a Label Studio task"):
        import_labels(
            db, "species-id", tmp_path / "tasks.json", catalog=catalog, manifests=manifests_of(), author=None
        )
    with pytest.raises(NotFound, match="unknown pipeline"):
        import_labels(db, "nope", bad, catalog=catalog, manifests=manifests_of(), author=None)


def test_crop_health_schema_excludes_background(catalog: PipelineCatalog) -> None:
    schema = LabelSchema.from_manifest(catalog.get("crop-health"), crop_manifest())
    assert schema.names == ["rust", "drought"] and not schema.decision
    assert LabelSchema.from_manifest(catalog.get("line-inspection"), line_manifest()).decision


def test_label_studio_decisions_and_unsupported_regions(
    db: ResultsDB, objects: ObjectStore, catalog: PipelineCatalog, tmp_path: Path
) -> None:
    spec = catalog.get("line-inspection")
    stored = line_answers(db, objects, spec)

    def task(s: Stored, result: list[dict[str, Any]], with_id: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {"image": f"/data/local-files/?d=x/images/{s.content_hash}.png"}
        if with_id:
            data["keeneye_observation_id"] = s.observation_id
        return {"data": data, "annotations": [{"result": result}]}

    decision = [{"type": "choices", "from_name": "decision", "value": {"choices": ["DEFECT"]}}]
    scratch = {
        "type": "polygonlabels",
        "from_name": "label",
        "original_width": 64,
        "original_height": 64,
        "value": {"points": [[10, 10], [40, 10], [40, 40]], "polygonlabels": ["scratch"]},
    }
    ok = [{"type": "choices", "from_name": "decision", "value": {"choices": ["OK"]}}, scratch]
    brush = [{"type": "brushlabels", "from_name": "brush", "id": "b1", "value": {"rle": [1, 2]}}]
    tasks = [
        task(stored[0], decision),
        task(stored[1], ok),
        task(stored[2], brush),
        task(stored[3], [], False),
    ]
    (tmp_path / "ls.json").write_text(json.dumps(tasks))
    lookup = manifests_of(line_manifest())

    report = import_labels(
        db, spec.name, tmp_path / "ls.json", catalog=catalog, manifests=lookup, author=None
    )
    assert [(p.code, p.file) for p in report.errors] == [
        ("conflicting_decision", f"{stored[1].content_hash}.png"),
        ("unsupported_region", f"{stored[2].content_hash}.png"),
    ]
    assert report.errors[0].message == "the decision says OK but the drawn regions mean DEFECT"
    assert report.errors[1].message == "region b1: Label Studio 'brushlabels' regions are not supported"
    report = import_labels(
        db, spec.name, tmp_path / "ls.json", catalog=catalog, manifests=lookup, author=None, skip_invalid=True
    )
    assert report.written == 2
    # DEFECT chosen without drawing; nothing drawn at all (mapped by the file name) means OK
    assert feedback_labels(db, stored) == [
        [{"decision": "DEFECT"}],
        [],
        [],
        [{"instances": [], "decision": "OK"}],
    ]


def test_rle_masks_import_as_polygons(
    db: ResultsDB, objects: ObjectStore, catalog: PipelineCatalog, tmp_path: Path
) -> None:
    """CVAT exports drawn masks as RLE; feedback stores polygons that cover the same pixels."""
    import numpy as np

    from keeneye.geometry import encode_rle, polygons_to_mask

    spec = catalog.get("line-inspection")
    stored = line_answers(db, objects, spec)[:1]  # two instances
    schema = LabelSchema.from_manifest(spec, line_manifest(), model_version="1")
    export_labels(db, objects, spec.name, tmp_path / "out", schema=schema, fmt="coco")
    path = tmp_path / "out" / "annotations.json"
    doc = json.loads(path.read_text())
    [image] = [im for im in doc["images"] if im["keeneye_observation_id"] == stored[0].observation_id]
    doc["images"], doc["annotations"] = (
        [image],
        [a for a in doc["annotations"] if a["image_id"] == image["id"]],
    )
    mask = np.zeros((64, 64), bool)
    mask[10:20, 5:25] = True
    doc["annotations"][0]["segmentation"] = encode_rle(mask)
    doc["annotations"][0]["bbox"] = [5, 10, 20, 10]
    doc["annotations"][1]["segmentation"] = {"size": [64, 64], "counts": "garbage!"}
    path.write_text(json.dumps(doc))
    lookup = manifests_of(line_manifest())
    report = import_labels(db, spec.name, path, catalog=catalog, manifests=lookup, author=None)
    [problem] = report.errors
    assert (problem.code, problem.message.split(":")[0]) == (
        "bad_geometry",
        f"annotation {doc['annotations'][1]['id']}",
    )
    # a forged canvas size is refused before anything is decoded
    doc["annotations"][1]["segmentation"] = {"size": [100_000, 100_000], "counts": [10**10]}
    path.write_text(json.dumps(doc))
    [problem] = import_labels(db, spec.name, path, catalog=catalog, manifests=lookup, author=None).errors
    assert problem.message.endswith("unreadable RLE mask (its size 100000×100000 is not the image's 64×64)")
    doc["annotations"][1]["segmentation"] = []
    path.write_text(json.dumps(doc))
    report = import_labels(db, spec.name, path, catalog=catalog, manifests=lookup, author=None)
    assert report.ok and report.written == 1
    [[label]] = feedback_labels(db, stored)
    first = label["instances"][0]
    assert first["bbox"] == [5.0, 10.0, 20.0, 10.0]
    back = polygons_to_mask(first["segmentation"], 64, 64)
    assert (back & mask).sum() / (back | mask).sum() >= 0.95
    assert "segmentation" not in label["instances"][1]  # a box-only region stays a box


def test_queue_answers_batches_fresh_answers(
    db: ResultsDB, objects: ObjectStore, catalog: PipelineCatalog, caplog: pytest.LogCaptureFixture
) -> None:
    """What the API and the workers call after storing answers: one insert, idempotent, never raises."""
    from keeneye.lifecycle import queue_answers

    spec = catalog.get("species-id")
    unsure = store_answer(
        db, objects, spec.name, species_result([0.5, 0.3, 0.1, 0.05, 0.05]), species_jpeg(1), fmt="jpeg"
    )
    sure = store_answer(
        db, objects, spec.name, species_result([0.9, 0.05, 0.05, 0, 0]), species_jpeg(2), fmt="jpeg"
    )
    answers = [
        (unsure.observation_id, as_answer(unsure.result)),
        (sure.observation_id, as_answer(sure.result)),
    ]
    assert queue_answers(db, spec, answers, audit_share=0.0) == 1
    assert queue_answers(db, spec, answers, audit_share=0.0) == 0  # a redelivery queues nothing twice
    assert queue_answers(db, spec, answers, audit_share=1.0) == 2  # both fall in a 100 % audit
    assert [(e.observation_id, e.reasons) for e in review_queue(db, spec.name)] == [
        (unsure.observation_id, ("low_confidence", "audit")),
        (sure.observation_id, ("audit",)),
    ]
    assert queue_answers(db, spec, [("0" * 32, as_answer(unsure.result))], audit_share=0.0) == 0
    assert "could not queue 1 answer(s) of species-id for review" in caplog.text
