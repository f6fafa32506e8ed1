"""The evaluation report of a registered version: ``GET /v1/pipelines/{name}/models/{version}/evaluation``.

``keeneye train`` evaluates the exported bundle on the test split and logs the report with the
version's MLflow run (``training/run.py``): ``evaluation/evaluation.json`` (scalar metrics, per-class
scores, the confusion matrix, the PR curves as points), ``run/validation.json`` (dataset size and class
counts) and the bundle itself, whose manifest ``model/keeneye.json`` holds the gate results, the data
version and the split sizes. This route reads those three files and answers one document whose shape
does not depend on the task, so the models page draws classify, detect and segment reports with the
same code: ``classes`` (one row per class: precision / recall / F1 / support, AP for classification,
IoU for zones), ``pr_curves``, ``confusion_matrix`` (with its unit: images, or pixels for zones),
``gates`` (every check against its threshold) and ``data``.

A version registered without a training run (``keeneye models register``) has no report: 404 naming
``keeneye evaluate``, which measures it into a local folder (it does not attach a report to the
version). A damaged report is a 500 naming the file. Viewers may read it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Literal, TypedDict

from fastapi import APIRouter

from keeneye.domain import InvalidInput, JsonObject, JsonValue, KeeneyeError, NotFound
from keeneye.models.manifest import MANIFEST_FILE, ModelManifest
from keeneye.registry import GateStatus, ModelVersionInfo
from keeneye.registry.versions import ARTIFACT_PATH, TAG_DATA_VERSION
from keeneye.serving.routes.deps import VIEWER, StateDep
from keeneye.serving.routes.params import ModelVersion, PipelineName
from keeneye.serving.schemas import API_ERRORS, ErrorResponse
from keeneye.serving.state import AppState
from keeneye.training.evaluate import PrCurveJson
from keeneye.training.gates import CheckKind, GateCheckJson

log = logging.getLogger(__name__)

router = APIRouter(tags=["models"], dependencies=[VIEWER], responses=API_ERRORS)

# Where training/run.py logs the files of a run (``_log_run``: evaluation/…, run/…; the bundle: model/…).
EVALUATION_FILE = "evaluation/evaluation.json"
VALIDATION_FILE = "run/validation.json"
MANIFEST_PATH = f"{ARTIFACT_PATH}/{MANIFEST_FILE}"
SPLITS = ("train", "val", "test")
DECISION_LABELS = ["OK", "DEFECT"]  # the image-level matrix of ok-defect pipelines counts images


class ClassRow(TypedDict):
    """One class of the report; None where the task does not measure it."""

    name: str
    precision: float | None
    recall: float | None
    f1: float | None
    support: int | None  # test images of the class (classification) or its pixels (zones)
    average_precision: float | None
    iou: float | None


class ConfusionJson(TypedDict):
    """Truth in rows, prediction in columns."""

    labels: list[str]
    counts: list[list[int]]
    unit: Literal["images", "pixels"]


class GatesJson(TypedDict):
    status: GateStatus  # as the registry records it (what promote checks)
    passed: bool | None
    checks: list[GateCheckJson]
    notes: list[str]
    champion_version: str | None


class DataJson(TypedDict):
    version: str | None  # the dataset's content hash
    images: int | None
    annotations: int | None
    class_counts: dict[str, int]
    splits: dict[str, int] | None


class EvaluationView(TypedDict):
    pipeline: str
    model: str
    version: str
    task: str
    n_images: int | None  # test images
    metrics: dict[str, float]
    undefined: list[str]  # metrics that could not be measured (no positives …)
    classes: list[ClassRow]
    class_unit: Literal["images", "pixels"]
    pr_curves: list[PrCurveJson]
    confusion_matrix: ConfusionJson | None
    gates: GatesJson
    data: DataJson
    latency_ms: dict[str, float]
    subgroups: JsonObject


# --------------------------------------------------------------------------------------------------
# Narrowing the stored JSON (it is ours, but a file can be damaged or written by an older keeneye)
# --------------------------------------------------------------------------------------------------


def _obj(value: JsonValue) -> JsonObject:
    return value if isinstance(value, dict) else {}


def _list(value: JsonValue) -> list[JsonValue]:
    return value if isinstance(value, list) else []


def _num(value: JsonValue) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: JsonValue) -> int | None:
    number = _num(value)
    return int(number) if number is not None else None


def _strings(value: JsonValue) -> list[str]:
    return [str(v) for v in _list(value)]


def _matrix(value: JsonValue) -> list[list[int]] | None:
    if not isinstance(value, list) or not value:
        return None
    rows = [[_int(c) for c in row] if isinstance(row, list) else [] for row in value]
    if any(len(r) != len(rows) or any(c is None for c in r) for r in rows):
        return None  # not square, or not counts
    return [[int(c or 0) for c in r] for r in rows]


def _parse(raw: bytes, what: str, info: ModelVersionInfo) -> JsonObject:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise KeeneyeError(
            f"{what} of {info.name} v{info.version} is damaged ({exc})",
            fix="evaluate the version again: keeneye evaluate --pipeline … --model VERSION --data DIR",
        ) from exc
    if not isinstance(data, dict):
        raise KeeneyeError(f"{what} of {info.name} v{info.version} is not a JSON object")
    return data


# --------------------------------------------------------------------------------------------------
# The view (pure)
# --------------------------------------------------------------------------------------------------


def _div(num: float, den: float) -> float | None:
    return num / den if den else None


def _f1(p: float | None, r: float | None) -> float | None:
    if p is None or r is None:
        return None
    return 2 * p * r / (p + r) if p + r else 0.0


def pixel_rows(counts: list[list[int]], names: Sequence[str], iou: JsonObject) -> list[ClassRow]:
    """Per-class pixel precision / recall / F1 from a zone confusion matrix, with each class's IoU;
    rows for the classes the report has an IoU for (the zone classes), else every class."""
    wanted = [n for n in names if n in iou] or list(names)
    rows: list[ClassRow] = []
    for name in wanted:
        c = names.index(name)
        tp = counts[c][c]
        p = _div(tp, sum(r[c] for r in counts))
        r = _div(tp, sum(counts[c]))
        rows.append(
            {
                "name": name,
                "precision": p,
                "recall": r,
                "f1": _f1(p, r),
                "support": sum(counts[c]),
                "average_precision": None,
                "iou": _num(iou.get(name)),
            }
        )
    return rows


def _curves(report: JsonObject) -> list[PrCurveJson]:
    out: list[PrCurveJson] = []
    for raw in _list(report.get("pr_curves")):
        c = _obj(raw)
        precision = [_num(v) for v in _list(c.get("precision"))]
        recall = [_num(v) for v in _list(c.get("recall"))]
        if not precision or len(precision) != len(recall) or None in precision or None in recall:
            continue
        out.append(
            {
                "label": str(c.get("label", "")),
                "average_precision": _num(c.get("average_precision")) or 0.0,
                "positives": _int(c.get("positives")) or 0,
                "precision": [float(v or 0.0) for v in precision],
                "recall": [float(v or 0.0) for v in recall],
            }
        )
    return out


_CHECK_KINDS: dict[str, CheckKind] = {
    "absolute": "absolute",
    "regression": "regression",
    "subgroup": "subgroup",
    "target": "target",
}


def _gates(info: ModelVersionInfo, manifest: ModelManifest | None) -> GatesJson:
    stored = manifest.gates if manifest is not None else {}
    checks: list[GateCheckJson] = []
    for raw in _list(stored.get("checks")):
        c = _obj(raw)
        kind = _CHECK_KINDS.get(str(c.get("kind")))
        if kind is None or _num(c.get("threshold")) is None:
            continue
        checks.append(
            {
                "kind": kind,
                "metric": str(c.get("metric", "")),
                "value": _num(c.get("value")),
                "threshold": _num(c.get("threshold")) or 0.0,
                "passed": c.get("passed") is True,
                "message": str(c.get("message", "")),
                "group": None if c.get("group") is None else str(c.get("group")),
            }
        )
    passed = stored.get("passed")
    champion = stored.get("champion_version")
    return {
        "status": info.gates,
        "passed": passed if isinstance(passed, bool) else None,
        "checks": checks,
        "notes": _strings(stored.get("notes")),
        "champion_version": None if champion is None else str(champion),
    }


def _data(info: ModelVersionInfo, manifest: ModelManifest | None, validation: JsonObject) -> DataJson:
    training = _obj(manifest.extra.get("training")) if manifest is not None else {}
    sizes = [_int(v) for v in _list(training.get("split_sizes"))]
    counts = _obj(validation.get("class_counts"))
    return {
        "version": (manifest.data_version if manifest is not None else None)
        or info.tags.get(TAG_DATA_VERSION),
        "images": _int(validation.get("n_images")),
        "annotations": _int(validation.get("n_annotations")),
        "class_counts": {str(k): int(v) for k, v in counts.items() if isinstance(v, int)},
        "splits": (
            {s: int(n or 0) for s, n in zip(SPLITS, sizes, strict=True)}
            if len(sizes) == len(SPLITS) and None not in sizes
            else None
        ),
    }


def evaluation_view(
    pipeline: str,
    info: ModelVersionInfo,
    report: JsonObject,
    manifest: ModelManifest | None,
    validation: JsonObject,
) -> EvaluationView:
    """The document the route answers, from the stored files (``manifest`` and ``validation`` may be
    missing: a version logged by an older keeneye)."""
    details = _obj(report.get("details"))
    task = str(report.get("task") or info.task)
    curves = _curves(report)
    labels = _strings(details.get("labels"))
    counts = _matrix(details.get("confusion_matrix"))
    pixels = task != "classify" and labels != DECISION_LABELS
    confusion: ConfusionJson | None = (
        {"labels": labels, "counts": counts, "unit": "pixels" if pixels else "images"}
        if counts is not None and len(labels) == len(counts)
        else None
    )
    classes: list[ClassRow] = []
    if task == "classify":
        ap = {c["label"]: c["average_precision"] for c in curves}
        for name, raw in _obj(details.get("per_class")).items():
            m = _obj(raw)
            classes.append(
                {
                    "name": name,
                    "precision": _num(m.get("precision")),
                    "recall": _num(m.get("recall")),
                    "f1": _num(m.get("f1")),
                    "support": _int(m.get("support")),
                    "average_precision": ap.get(name),
                    "iou": None,
                }
            )
    else:
        zones = _obj(details.get("zones"))
        zone_counts = _matrix(zones.get("confusion_matrix"))
        names = manifest.class_names if manifest is not None else (labels if pixels else [])
        iou = _obj(details.get("iou_per_class"))
        if zone_counts is not None and len(names) == len(zone_counts):
            classes = pixel_rows(zone_counts, names, iou)
        else:
            classes = [
                {
                    "name": n,
                    "precision": None,
                    "recall": None,
                    "f1": None,
                    "support": None,
                    "average_precision": None,
                    "iou": _num(v),
                }
                for n, v in iou.items()
            ]
    metrics = _obj(report.get("metrics"))
    latency = _obj(details.get("latency"))
    return {
        "pipeline": pipeline,
        "model": info.name,
        "version": info.version,
        "task": task,
        "n_images": _int(details.get("n_images")),
        "metrics": {k: v for k, v in ((k, _num(v)) for k, v in metrics.items()) if v is not None},
        "undefined": _strings(details.get("undefined")),
        "classes": classes,
        "class_unit": "images" if task == "classify" else "pixels",
        "pr_curves": curves,
        "confusion_matrix": confusion,
        "gates": _gates(info, manifest),
        "data": _data(info, manifest, validation),
        "latency_ms": {k: v for k, v in ((k, _num(v)) for k, v in latency.items()) if v is not None},
        "subgroups": _obj(report.get("subgroups")),
    }


# --------------------------------------------------------------------------------------------------
# Reading it
# --------------------------------------------------------------------------------------------------


def read_evaluation(state: AppState, name: str, version: str) -> EvaluationView:
    """The report of ``version`` of the pipeline ``name``: NotFound for an unknown pipeline or version,
    or a version without a report."""
    model = state.catalog.get(name).model.name  # NotFound naming the pipelines
    info = state.registry.get(model, version)  # NotFound naming the versions
    raw = state.registry.run_file(info, EVALUATION_FILE)
    if raw is None:
        raise NotFound(
            f"{model} v{info.version} has no evaluation report: it was registered without `keeneye train`",
            fix=f"measure it into a local report: keeneye evaluate --pipeline {name} --model {info.version} "
            "--data DIR; versions trained with keeneye train show theirs here",
        )
    report = _parse(raw, EVALUATION_FILE, info)
    manifest: ModelManifest | None = None
    stored = state.registry.run_file(info, MANIFEST_PATH)
    if stored is not None:
        try:
            manifest = ModelManifest.parse(stored, source=MANIFEST_PATH)
        except InvalidInput as exc:  # the report still stands without gates and data version
            log.warning("%s v%s: %s", model, info.version, exc.message)
    validation_raw = state.registry.run_file(info, VALIDATION_FILE)
    validation = _parse(validation_raw, VALIDATION_FILE, info) if validation_raw is not None else {}
    return evaluation_view(name, info, report, manifest, validation)


@router.get(
    "/v1/pipelines/{name}/models/{version}/evaluation",
    response_model=None,  # typing.TypedDict: pydantic wants typing_extensions' on Python 3.11
    summary="A version's evaluation report: metrics per class, PR curves, confusion matrix, gates, data",
    responses={
        404: {
            "model": ErrorResponse,
            "description": "unknown pipeline or version, or a version registered without a report",
        },
        500: {"model": ErrorResponse, "description": "the stored report is damaged"},
    },
)
async def get_evaluation(name: PipelineName, version: ModelVersion, state: StateDep) -> EvaluationView:
    """What ``keeneye train`` measured on the test split before registering the version, in one
    shape for every task (see the module docstring)."""
    return await asyncio.to_thread(read_evaluation, state, name, version)
