"""``GET /v1/pipelines/{name}/models/{version}/evaluation`` on a real port, against reports logged the
way ``keeneye train`` logs them (``evaluation_support``): the numbers are known in advance.

Classification (species-id): per-class P/R/F1/support and AP, the confusion matrix in images, a PR
curve per class, failed gates with their thresholds, the data version and split sizes. Segment with an
OK/DEFECT decision (line-inspection): the image-level matrix and PR curve, pixel rows with IoU.
Zones (crop-health): the pixel matrix. Refusals: a version without a report, unknown names, a
damaged report; a viewer may read, nobody without a key.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from keeneye.domain import KeeneyeError, Role
from keeneye.registry import ModelRegistry
from keeneye.settings import Settings
from keeneye.store import open_results_db
from tests.serving_support import LiveServer, fast_registry_store, live_server, register_species_model
from tests.unit.serving.evaluation_support import SPLITS, Evaluated, log_run_files, register_evaluated

# MLflow's SQL store uses an SQLAlchemy loader that SQLAlchemy 2.1 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


@dataclass
class Reports:
    server: LiveServer
    species: Evaluated
    bare: str  # a species-id version registered without a report
    line: Evaluated
    crop: Evaluated


@pytest.fixture
def reports(settings: Settings, tmp_path: Path) -> Iterator[Reports]:
    species = register_evaluated(settings, tmp_path, "species-id", data_version="d-species")
    bare = register_species_model(settings, tmp_path, seed=3, alias="challenger")
    line = register_evaluated(settings, tmp_path, "line-inspection")
    crop = register_evaluated(settings, tmp_path, "crop-health")
    with live_server(settings) as server:
        yield Reports(server, species, bare, line, crop)


def _get(server: LiveServer, pipeline: str, version: str, **kwargs: object) -> httpx.Response:
    return httpx.get(f"{server.url}/v1/pipelines/{pipeline}/models/{version}/evaluation", **kwargs)  # type: ignore[arg-type]


def test_a_classification_report_has_every_number(reports: Reports) -> None:
    r = _get(reports.server, "species-id", reports.species.version)
    assert r.status_code == 200, r.text
    d = r.json()
    assert (d["pipeline"], d["model"], d["version"], d["task"], d["n_images"]) == (
        "species-id",
        "species-id",
        "1",
        "classify",
        10,
    )
    assert d["metrics"]["accuracy"] == pytest.approx(0.7)
    assert d["metrics"]["macro_f1"] == pytest.approx(0.6)
    rows = {c["name"]: c for c in d["classes"]}
    assert list(rows) == [
        "salmo_trutta",
        "esox_lucius",
        "perca_fluviatilis",
        "sander_lucioperca",
        "abramis_brama",
    ]
    trout = rows["salmo_trutta"]
    assert (trout["precision"], trout["recall"], trout["f1"], trout["support"]) == pytest.approx(
        (2 / 3, 2 / 3, 2 / 3, 3)
    )
    # Ranked by the one-vs-rest probability: two trout first, a pike, then the third trout → (1+1+¾)/3.
    assert trout["average_precision"] == pytest.approx(2.75 / 3)
    assert rows["perca_fluviatilis"]["average_precision"] == pytest.approx(1.0)
    assert rows["sander_lucioperca"]["precision"] == pytest.approx(0.5)
    bream = rows["abramis_brama"]
    assert (bream["recall"], bream["f1"], bream["average_precision"]) == pytest.approx((0.0, 0.0, 0.1))
    assert all(c["iou"] is None for c in d["classes"]) and d["class_unit"] == "images"
    assert d["confusion_matrix"] == {
        "labels": list(rows),
        "counts": [[2, 1, 0, 0, 0], [1, 2, 0, 0, 0], [0, 0, 2, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 0]],
        "unit": "images",
    }
    curves = {c["label"]: c for c in d["pr_curves"]}
    assert set(curves) == set(rows)  # every class has a positive test image
    assert curves["salmo_trutta"]["positives"] == 3
    assert curves["salmo_trutta"]["recall"][:3] == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert curves["salmo_trutta"]["precision"][:3] == pytest.approx([1.0, 1.0, 2 / 3])
    gates = d["gates"]
    assert (gates["status"], gates["passed"]) == ("failed", False)
    assert [(c["metric"], c["threshold"], c["passed"]) for c in gates["checks"]] == [
        ("accuracy", 0.8, False),
        ("macro_f1", 0.75, False),
    ]
    assert gates["checks"][0]["value"] == pytest.approx(0.7)
    assert d["data"] == {
        "version": "d-species",
        "images": sum(SPLITS),
        "annotations": 123,
        "class_counts": {
            "salmo_trutta": 3,
            "esox_lucius": 3,
            "perca_fluviatilis": 2,
            "sander_lucioperca": 1,
            "abramis_brama": 1,
        },
        "splits": {"train": 70, "val": 15, "test": 10},
    }
    assert d["latency_ms"]["p50_ms"] == pytest.approx(14.5)
    assert set(d["subgroups"]["camera_id"]) == {"cam0", "cam1"}


def test_a_line_inspection_report_counts_images_and_pixels(reports: Reports) -> None:
    d = _get(reports.server, "line-inspection", reports.line.version).json()
    assert d["task"] == "segment"
    # 12 frames, 8 with a defect; two defects missed, nothing invented.
    assert d["confusion_matrix"] == {"labels": ["OK", "DEFECT"], "counts": [[4, 0], [2, 6]], "unit": "images"}
    assert (d["metrics"]["precision"], d["metrics"]["recall"]) == pytest.approx((1.0, 0.75))
    (curve,) = d["pr_curves"]
    assert (curve["label"], curve["positives"]) == ("image has a defect / zone", 8)
    assert curve["recall"][-1] == pytest.approx(1.0) and curve["precision"][-1] == pytest.approx(8 / 12)
    (defect,) = d["classes"]
    assert defect["name"] == "defect" and d["class_unit"] == "pixels"
    assert defect["iou"] == pytest.approx(reports.line.evaluation.details["iou_per_class"]["defect"])
    assert (defect["precision"], defect["recall"]) == pytest.approx((0.9166667, 0.6875))
    assert defect["support"] == 8 * 16  # eight 4×4 squares
    checks = [(c["kind"], c["metric"], c["passed"]) for c in d["gates"]["checks"] if c["kind"] == "absolute"]
    assert checks == [("absolute", "precision", True), ("absolute", "recall", False)]
    assert {c["group"] for c in d["gates"]["checks"] if c["kind"] == "subgroup"} == {"S0", "S1"}
    assert d["data"]["version"] == "d-42" and d["data"]["splits"] == {"train": 70, "val": 15, "test": 10}


def test_a_zone_report_has_a_pixel_matrix(reports: Reports) -> None:
    d = _get(reports.server, "crop-health", reports.crop.version).json()
    matrix = d["confusion_matrix"]
    assert (matrix["labels"], matrix["unit"]) == (["background", "rust", "blight"], "pixels")
    assert sum(map(sum, matrix["counts"])) == 12 * 64  # every pixel of twelve 8×8 tiles
    assert [c["name"] for c in d["classes"]] == ["rust", "blight"]
    assert d["metrics"]["mean_iou"] == pytest.approx(reports.crop.evaluation.metrics["mean_iou"])
    assert [c["metric"] for c in d["gates"]["checks"]] == ["mean_iou", "recall"]


def test_versions_without_a_report_and_unknown_names_are_404(reports: Reports) -> None:
    bare = _get(reports.server, "species-id", reports.bare)
    assert bare.status_code == 404
    body = bare.json()
    assert body["detail"] == (
        f"species-id v{reports.bare} has no evaluation report: it was registered without `keeneye train`"
    )
    assert f"keeneye evaluate --pipeline species-id --model {reports.bare}" in body["fix"]
    missing = _get(reports.server, "species-id", "99")
    assert missing.status_code == 404 and "versions: 1, 2" in missing.json()["detail"]
    malformed = _get(reports.server, "species-id", "1;drop")  # not a version: refused by the spec's pattern
    assert malformed.status_code == 422 and malformed.json()["reason"] == "invalid_request"
    unknown = _get(reports.server, "salmon", "1")
    assert unknown.status_code == 404 and "species-id" in unknown.json()["detail"]


def test_a_damaged_report_is_named(settings: Settings, tmp_path: Path) -> None:
    version = register_species_model(settings, tmp_path, seed=4, alias="challenger")
    info = ModelRegistry(settings).get("species-id", version)
    broken = tmp_path / "evaluation.json"
    broken.write_text('{"metrics": {"accuracy": 0.9')  # cut short
    assert info.run_id is not None
    log_run_files(settings, info.run_id, [broken], [])
    with live_server(settings) as server:
        r = _get(server, "species-id", version)
    assert r.status_code == 500
    assert r.json()["detail"].startswith(f"evaluation/evaluation.json of species-id v{version} is damaged")


def test_run_file_reads_only_inside_the_run(settings: Settings, tmp_path: Path) -> None:
    evaluated = register_evaluated(settings, tmp_path, "species-id")
    registry = ModelRegistry(settings)
    info = registry.get("species-id", evaluated.version)
    assert registry.run_file(info, "evaluation/report.md", max_bytes=10**6) is not None
    for path in ("../../mlflow.db", "/etc/passwd", "evaluation/../model/keeneye.json", "evaluation"):
        assert registry.run_file(info, path) is None, path
    with pytest.raises(KeeneyeError, match="over the 10 bytes keeneye reads"):
        registry.run_file(info, "evaluation/report.md", max_bytes=10)


def test_a_viewer_may_read_a_report(settings: Settings, tmp_path: Path) -> None:
    evaluated = register_evaluated(settings, tmp_path, "species-id")
    settings = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"require_api_key": True})}
    )
    _, key = open_results_db(settings).create_api_key("viewer-key", Role.viewer)
    with live_server(settings) as server:
        assert _get(server, "species-id", evaluated.version).status_code == 401
        ok = _get(server, "species-id", evaluated.version, headers={"X-API-Key": key})
        assert ok.status_code == 200 and ok.json()["version"] == evaluated.version


@pytest.mark.slow
def test_a_trained_version_has_its_report(settings: Settings, tmp_path: Path) -> None:
    """``keeneye train``'s own files, not the support's copy of their layout: a tiny species run."""
    from keeneye.training.run import train_pipeline
    from keeneye.training.synth.species import generate_species

    fast_registry_store(settings)
    generate_species(tmp_path / "data", 40, seed=3, size=32)
    result = train_pipeline(
        settings,
        "species-id",
        tmp_path / "data",
        epochs=1,
        overrides={"backbone": "resnet10t", "image_size": 32, "batch_size": 8},
        progress=None,
    )
    assert result.version is not None
    with live_server(settings) as server:
        d = _get(server, "species-id", result.version).json()
    assert d["metrics"]["macro_f1"] == pytest.approx(result.metrics["macro_f1"])
    assert d["data"]["version"] == result.data_version
    assert d["data"]["splits"] == dict(zip(("train", "val", "test"), result.split_sizes, strict=True))
    assert d["data"]["images"] == 40
    assert d["gates"]["passed"] is result.gates.passed
    assert [c["metric"] for c in d["gates"]["checks"]] == [c.metric for c in result.gates.checks]
    matrix = d["confusion_matrix"]
    assert matrix["unit"] == "images" and sum(map(sum, matrix["counts"])) == result.split_sizes[2]
    assert len(d["classes"]) == 5 and all(c["precision"] is not None for c in d["classes"])
    assert {c["label"] for c in d["pr_curves"]} <= {c["name"] for c in d["classes"]}
    assert d["pr_curves"] and all(0 <= c["average_precision"] <= 1 for c in d["pr_curves"])
