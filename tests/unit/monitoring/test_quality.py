"""Online quality from feedback: hand-counted metrics on a real SQLite file, windows, drop signal,
gauges, the registry's references, and the ``keeneye feedback`` / ``keeneye quality`` commands."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from keeneye.cli import app, main
from keeneye.domain import InvalidInput, Variant
from keeneye.metrics import Metrics
from keeneye.monitoring.quality import (
    QualityWindow,
    evaluate_quality,
    online_quality,
    update_quality_metrics,
)
from keeneye.monitoring.quality import windows as quality
from keeneye.pipelines import PipelineCatalog, PipelineSpec, builtin_specs
from keeneye.registry import ModelRegistry
from keeneye.settings import Settings
from keeneye.store import ResultsDB, open_results_db, utcnow
from keeneye.store.schema import FeedbackRow
from tests.unit.monitoring.quality_support import (
    also_answered,
    answered,
    line_result,
    register_species,
    species_result,
)

# MLflow's SQL store uses an SQLAlchemy loader that SQLAlchemy 2.1 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

SPECS: dict[str, PipelineSpec] = {spec.name: spec for _, spec in builtin_specs()}
PIKE, PERCH, TROUT = "esox_lucius", "perca_fluviatilis", "salmo_trutta"


@pytest.fixture
def db(settings: Settings) -> ResultsDB:
    return open_results_db(settings)


def window(
    db: ResultsDB,
    pipeline: str,
    *,
    reference: Mapping[str, float] | None = None,
    min_feedback: int = 1,
    drop: float = 0.1,
) -> list[QualityWindow]:
    return online_quality(
        db,
        pipeline,
        spec=SPECS[pipeline],
        window_seconds=3600,
        reference_for=lambda version: reference or {},
        min_feedback=min_feedback,
        drop=drop,
        now=utcnow() + timedelta(seconds=1),
    )


# --------------------------------------------------------------------------------------------------
# Metrics, counted by hand
# --------------------------------------------------------------------------------------------------

# (truth, predicted): pike 4 right + 1 called perch; perch 2 right + 1 called pike; trout 1 right +
# 1 called perch. Per class: pike P 4/5 R 4/5; perch P 2/4 R 2/3; trout P 1/1 R 1/2.
CONFUSION = [(PIKE, PIKE)] * 4 + [(PIKE, PERCH), (PERCH, PERCH), (PERCH, PERCH), (PERCH, PIKE)]
CONFUSION += [(TROUT, TROUT), (TROUT, PERCH)]


@pytest.mark.parametrize("page", [3, 500], ids=["keyset-pages-of-3", "one-page"])
def test_classify_macro_metrics_on_a_known_confusion(
    db: ResultsDB, page: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quality, "FEEDBACK_PAGE", page)
    monkeypatch.setattr(quality, "PREDICTION_CHUNK", 2)
    for truth, predicted in CONFUSION:
        obs = answered(db, "species-id", species_result(predicted))
        db.add_feedback(obs, {"class": truth}, "api")
    reference = {"macro_precision": 0.9, "macro_recall": 0.8, "macro_f1": 0.85, "accuracy": 0.95}
    [w] = window(db, "species-id", reference=reference)
    assert (w.model_version, w.variant, w.kind, w.n) == ("1", "champion", "classify", 10)
    expected = {
        "accuracy": 7 / 10,
        "macro_precision": (4 / 5 + 2 / 4 + 1 / 1) / 3,
        "macro_recall": (4 / 5 + 2 / 3 + 1 / 2) / 3,
        "macro_f1": (4 / 5 + 4 / 7 + 2 / 3) / 3,  # F1 pike 4/5, perch 2·½·⅔/(½+⅔) = 4/7, trout 2/3
    }
    expected |= {
        "precision": expected["macro_precision"],
        "recall": expected["macro_recall"],
        "f1": expected["macro_f1"],
    }
    assert w.metrics == pytest.approx(expected)
    # The classify reference is the manifest's macro values, under the online names too.
    assert w.reference == {
        "precision": 0.9,
        "recall": 0.8,
        "f1": 0.85,
        "accuracy": 0.95,
        "macro_precision": 0.9,
        "macro_recall": 0.8,
        "macro_f1": 0.85,
    }
    assert w.relative_drops["accuracy"] == pytest.approx((0.95 - 0.7) / 0.95)


def test_ok_defect_precision_recall_of_defect(db: ResultsDB) -> None:
    """tp 3, fp 1, fn 2, tn 4 → precision 3/4, recall 3/5, F1 2/3, accuracy 7/10."""
    pairs = [("DEFECT", "DEFECT")] * 3 + [("OK", "DEFECT")] + [("DEFECT", "OK")] * 2 + [("OK", "OK")] * 4
    for k, (truth, said) in enumerate(pairs):
        obs = answered(db, "line-inspection", line_result(said))
        # One true defect arrives as an importer writes it: instances without a decision.
        label = {"instances": [{"class": "scratch", "bbox": [1, 1, 4, 4]}]} if k == 0 else {"decision": truth}
        db.add_feedback(obs, label, "import" if k == 0 else "api")
    [w] = window(db, "line-inspection", reference={"precision": 0.98, "recall": 0.96, "f1": 0.97})
    assert (w.kind, w.n) == ("ok-defect", 10)
    assert w.metrics == pytest.approx({"precision": 3 / 4, "recall": 3 / 5, "f1": 2 / 3, "accuracy": 7 / 10})
    assert w.reference == {"precision": 0.98, "recall": 0.96, "f1": 0.97}


def _inst(
    cls: str, box: list[float], polygon: list[list[float]] | None = None, score: float = 0.9
) -> dict[str, Any]:
    item: dict[str, Any] = {"class": cls, "box": box, "score": score}
    if polygon is not None:
        item["polygon"] = polygon
    return item


def test_instance_precision_recall_at_iou_half(db: ResultsDB) -> None:
    """Six images: found (box), shifted too far (IoU .25), wrong class, found by mask, a false find on
    an empty image, two misses → tp 2, fp 3, fn 4."""
    square = [20.0, 20.0, 40.0, 20.0, 40.0, 40.0, 20.0, 40.0]
    cases = [
        ([{"class": "rust", "bbox": [0, 0, 10, 10]}], [_inst("rust", [0, 0, 10, 10])]),
        ([{"class": "rust", "bbox": [0, 0, 10, 10]}], [_inst("rust", [6, 0, 16, 10])]),
        ([{"class": "rust", "bbox": [0, 0, 10, 10]}], [_inst("blight", [0, 0, 10, 10])]),
        (
            [{"class": "rust", "segmentation": [square], "bbox": [20, 20, 20, 20]}],
            [_inst("rust", [20, 20, 40, 40], [[20, 20], [39, 20], [39, 39], [20, 39]])],
        ),
        ([], [_inst("rust", [0, 0, 5, 5])]),
        ([{"class": "rust", "bbox": [0, 0, 5, 5]}, {"class": "rust", "bbox": [10, 10, 5, 5]}], []),
    ]
    for truth, predicted in cases:
        obs = answered(db, "crop-health", {"task": "segment", "instances": predicted})
        db.add_feedback(obs, {"instances": truth}, "api")
    [w] = window(db, "crop-health", reference={"instance_precision": 0.8, "precision": 0.99})
    assert (w.kind, w.n) == ("instances", 6)
    assert w.metrics == pytest.approx({"precision": 2 / 5, "recall": 2 / 6, "f1": 2 * 2 / (2 * 2 + 3 + 4)})
    # Compared with the manifest's instance metrics, never with its pixel-level "precision".
    assert w.reference == {"precision": 0.8}


# Instance matching itself is table-tested with the geometry (tests/unit/test_geometry.py).


# --------------------------------------------------------------------------------------------------
# The window: latest label wins, old labels leave, versions stay apart
# --------------------------------------------------------------------------------------------------


def test_latest_feedback_per_observation_wins_and_old_feedback_leaves(db: ResultsDB) -> None:
    corrected = answered(db, "species-id", species_result(PIKE))
    db.add_feedback(corrected, {"class": PERCH}, "api")  # wrong at first …
    db.add_feedback(corrected, {"class": PIKE}, "review")  # … then corrected
    old = answered(db, "species-id", species_result(PIKE))
    old_id = db.add_feedback(old, {"class": PERCH}, "api")
    with db.session() as s:
        s.execute(
            update(FeedbackRow)
            .where(FeedbackRow.id == old_id)
            .values(created_at=utcnow() - timedelta(days=2))
        )
    [w] = window(db, "species-id")
    assert w.n == 1
    assert w.metrics["accuracy"] == 1.0


def test_versions_and_variants_are_kept_apart(db: ResultsDB) -> None:
    for truth in (PIKE, PERCH, TROUT, PIKE):
        obs = answered(db, "species-id", species_result(truth), version="1")  # the champion is right
        also_answered(db, obs, "species-id", species_result(PERCH), version="2", variant=Variant.shadow)
        db.add_feedback(obs, {"class": truth}, "api")
    other = answered(db, "line-inspection", line_result("OK"))  # another pipeline's label stays out
    db.add_feedback(other, {"decision": "OK"}, "api")
    windows = window(db, "species-id")
    assert [(w.model_version, w.variant, w.n) for w in windows] == [("1", "champion", 4), ("2", "shadow", 4)]
    assert windows[0].metrics["accuracy"] == 1.0
    assert windows[1].metrics["accuracy"] == 1 / 4


def test_no_feedback_no_window(db: ResultsDB) -> None:
    answered(db, "species-id", species_result(PIKE))
    assert window(db, "species-id") == []


# --------------------------------------------------------------------------------------------------
# The drop signal
# --------------------------------------------------------------------------------------------------


def _ok_defect_set(db: ResultsDB) -> None:
    """precision 3/4 = 0.75, recall 1."""
    for truth, said in [("DEFECT", "DEFECT")] * 3 + [("OK", "DEFECT")]:
        obs = answered(db, "line-inspection", line_result(said))
        db.add_feedback(obs, {"decision": truth}, "api")


@pytest.mark.parametrize(
    ("relative_drop", "min_feedback", "fires"),
    [
        pytest.param(0.11, 4, True, id="11%-below-fires"),
        pytest.param(0.09, 4, False, id="9%-below-does-not"),
        pytest.param(0.10, 4, False, id="exactly-10%-does-not"),
        pytest.param(0.50, 5, False, id="too-few-labels"),
    ],
)
def test_drop_signal(db: ResultsDB, relative_drop: float, min_feedback: int, fires: bool) -> None:
    _ok_defect_set(db)
    reference = {"precision": 0.75 / (1 - relative_drop), "recall": 1.0}
    [w] = window(db, "line-inspection", reference=reference, min_feedback=min_feedback, drop=0.1)
    assert w.relative_drops == pytest.approx({"precision": relative_drop, "recall": 0.0})
    assert w.drop is fires


def test_gauges_are_set_and_retired(db: ResultsDB) -> None:
    _ok_defect_set(db)
    metrics = Metrics()
    windows = window(db, "line-inspection", reference={"precision": 0.75 / 0.8}, min_feedback=1)
    update_quality_metrics(metrics, windows)
    sample = metrics.registry.get_sample_value
    labels = {"pipeline": "line-inspection", "version": "1"}
    assert sample("keeneye_online_quality", {**labels, "metric": "precision"}) == pytest.approx(0.75)
    assert sample("keeneye_online_quality", {**labels, "metric": "recall"}) == 1.0
    assert sample("keeneye_quality_drop", labels) == 1.0
    update_quality_metrics(metrics, [], pipelines=["line-inspection"])  # the version left the window
    assert sample("keeneye_quality_drop", labels) is None
    assert sample("keeneye_online_quality", {**labels, "metric": "precision"}) is None


def test_evaluate_quality_takes_references_from_the_registry(settings: Settings, tmp_path: Path) -> None:
    settings = settings.model_copy(
        update={"monitoring": settings.monitoring.model_copy(update={"quality_min_feedback": 5})}
    )
    version = register_species(settings, tmp_path, accuracy=0.9, macro_precision=0.9, macro_recall=0.9)
    db = open_results_db(settings)
    for truth in (PIKE, PERCH, TROUT, PIKE, PERCH):
        obs = answered(db, "species-id", species_result(PIKE), version=version)
        db.add_feedback(obs, {"class": truth}, "api")
    metrics = Metrics()
    out = evaluate_quality(settings, db, ModelRegistry(settings), PipelineCatalog(settings), metrics)
    assert set(out) == {"crop-health", "line-inspection", "species-id"}
    [w] = out["species-id"]
    assert w.reference == {
        "precision": 0.9,
        "recall": 0.9,
        "accuracy": 0.9,
        "macro_precision": 0.9,
        "macro_recall": 0.9,
    }
    assert w.metrics["accuracy"] == pytest.approx(2 / 5)
    assert w.drop is True
    assert (
        metrics.registry.get_sample_value(
            "keeneye_quality_drop", {"pipeline": "species-id", "version": version}
        )
        == 1.0
    )


# --------------------------------------------------------------------------------------------------
# Label normalisation shared by the API and the CLI (the refusals are tested through HTTP)
# --------------------------------------------------------------------------------------------------


def test_coco_file_becomes_instances(tmp_path: Path) -> None:
    from keeneye.cli.quality import read_coco_instances

    coco: dict[str, Any] = {
        "images": [{"id": 7, "width": 64, "height": 48}],
        "categories": [{"id": 1, "name": "scratch"}, {"id": 2, "name": "dent"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 2, "bbox": [1, 2, 3, 4], "segmentation": []},
            {
                "id": 2,
                "image_id": 7,
                "category_id": 1,
                "segmentation": [[0, 0, 4, 0, 4, 4]],
                "bbox": [0, 0, 4, 4],
            },
        ],
    }
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(coco))
    assert read_coco_instances(path) == [
        {"class": "dent", "bbox": [1, 2, 3, 4]},
        {"class": "scratch", "segmentation": [[0, 0, 4, 0, 4, 4]], "bbox": [0, 0, 4, 4]},
    ]
    coco["annotations"][1]["image_id"] = 8
    path.write_text(json.dumps(coco))
    with pytest.raises(InvalidInput, match="annotations of 2 images") as exc:
        read_coco_instances(path)
    assert exc.value.reason == "bad_coco"


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def test_cli_feedback_and_quality(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    settings = Settings(home=home)
    version = register_species(settings, tmp_path, accuracy=0.95, macro_precision=0.9)
    db = open_results_db(settings)
    obs = answered(db, "species-id", species_result(PIKE), version=version)
    env = {"KEENEYE_HOME": str(home), "COLUMNS": "250"}
    runner = CliRunner()

    result = runner.invoke(app, ["feedback", obs, "--class", PERCH, "--author", "ana", "--json"], env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    receipt = json.loads(result.stdout)
    assert (receipt["label"], receipt["source"], receipt["author"]) == ({"class": PERCH}, "cli", "ana")
    [stored] = db.feedback_for(obs)
    assert (stored.id, stored.label, stored.source) == (receipt["id"], {"class": PERCH}, "cli")

    result = runner.invoke(app, ["quality", "--pipeline", "species-id", "--json"], env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    [w] = json.loads(result.stdout)["windows"]
    assert (w["model_version"], w["n"], w["metrics"]["accuracy"], w["reference"]["accuracy"]) == (
        version,
        1,
        0.0,
        0.95,
    )
    assert w["drop"] is False  # one label is below the default minimum of 20
    table = runner.invoke(app, ["quality", "--pipeline", "species-id"], env=env)
    assert table.exit_code == 0 and "too few labels" in table.stdout and "test 0.950" in table.stdout

    # A refused label: one line with the reason, exit 2, nothing stored.
    monkeypatch.setenv("KEENEYE_HOME", str(home))
    monkeypatch.setattr(sys, "argv", ["keeneye", "feedback", obs, "--class", "not_a_fish"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "'not_a_fish' is not a class of species-id" in err and "esox_lucius" in err
    assert len(db.feedback_for(obs)) == 1
