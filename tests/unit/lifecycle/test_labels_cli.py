"""``keeneye labels queue | export | import`` through the command line, with a registered model in a
real MLflow store and a SQLite results database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from keeneye.cli import labels as labels_cli
from keeneye.domain import InvalidInput, NotFound
from keeneye.lifecycle import enqueue, review_queue, review_reasons
from keeneye.pipelines import PipelineCatalog
from keeneye.settings import Settings
from keeneye.store import open_object_store, open_results_db
from tests.serving_support import register_species_model
from tests.unit.lifecycle.support import SPECIES, as_answer, species_jpeg, species_result, store_answer

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

runner = CliRunner()
app = typer.Typer()
labels_cli.register(app)


@pytest.fixture
def home(settings: Settings, tmp_path: Path) -> Path:
    """species-id v1 registered as champion, two answers in its review queue."""
    register_species_model(settings, tmp_path)
    db, objects = open_results_db(settings), open_object_store(settings)
    spec = PipelineCatalog(settings).get("species-id")
    for seed, probabilities in enumerate([[0.5, 0.3, 0.1, 0.05, 0.05], [0.3, 0.25, 0.2, 0.15, 0.1]]):
        s = store_answer(
            db, objects, spec.name, species_result(probabilities), species_jpeg(seed), fmt="jpeg"
        )
        enqueue(
            db,
            s.observation_id,
            spec.name,
            review_reasons(spec, as_answer(s.result), audit_share=0, rng_key="k"),
        )
    return settings.home


def _run(args: list[str], home: Path) -> tuple[int, str, str, BaseException | None]:
    result = runner.invoke(app, args, env={"KEENEYE_HOME": str(home), "COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr, result.exception


def test_queue_export_correct_import(home: Path, settings: Settings, tmp_path: Path) -> None:
    db = open_results_db(settings)
    queued = [e.observation_id for e in review_queue(db, "species-id")]

    code, out, _, exc = _run(["labels", "queue", "--pipeline", "species-id", "--json"], home)
    assert code == 0, exc
    listed = json.loads(out)
    assert [e["observation_id"] for e in listed] == queued
    assert listed[0]["reasons"] == ["low_confidence"] and listed[0]["priority"] == 0.95
    code, out, _, _ = _run(["labels", "queue", "-p", "species-id"], home)
    assert code == 0 and "low_confidence" in out and "Brown trout (30%)" in out

    folder = tmp_path / "to-label"
    code, out, _, exc = _run(["labels", "export", "-p", "species-id", "--out", str(folder)], home)
    assert code == 0, exc
    assert "exported 2 review queue items (2 pre-annotations, model v1)" in out
    assert "keeneye labels import --pipeline species-id" in out
    code, _, _, exc = _run(["labels", "export", "-p", "species-id", "--out", str(folder)], home)
    assert code == 1 and isinstance(exc, InvalidInput) and exc.reason == "exists"

    coco = folder / "annotations.json"
    doc = json.loads(coco.read_text())
    doc["annotations"][0]["category_id"] = 5  # the person says: bream
    coco.write_text(json.dumps(doc))
    code, out, _, exc = _run(["labels", "import", str(coco), "-p", "species-id", "--author", "alice"], home)
    assert code == 0, exc
    assert "stored 2 label(s) from 2 image(s)" in out
    labels = [[(f.label, f.source, f.author) for f in db.feedback_for(i)] for i in queued]
    first = doc["images"][0]["keeneye_observation_id"]
    assert labels[queued.index(first)] == [({"class": SPECIES[4][0]}, "import", "alice")]
    code, out, _, _ = _run(["labels", "queue", "-p", "species-id"], home)
    assert "review queue of species-id is empty" in out

    code, out, _, _ = _run(["labels", "import", str(coco), "-p", "species-id", "--json"], home)
    assert code == 0 and json.loads(out)["unchanged"] == 2


def test_import_errors_name_the_file_and_store_nothing(
    home: Path, settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "ls"
    code, out, _, exc = _run(
        ["labels", "export", "-p", "species-id", "-o", str(folder), "-f", "label-studio"], home
    )
    assert code == 0, exc
    tasks = json.loads((folder / "tasks.json").read_text())
    for task in tasks:
        task["annotations"] = [{"result": task.pop("predictions")[0]["result"]}]
    tasks[1]["annotations"][0]["result"][0]["value"]["choices"] = ["carassius_auratus"]
    (folder / "export.json").write_text(json.dumps(tasks))

    code, _, err, _ = _run(["labels", "import", str(folder / "export.json"), "-p", "species-id"], home)
    assert code == 1
    assert "'carassius_auratus' is not a class of species-id" in err
    assert "nothing stored: 1 error(s) in 2 image(s)" in err
    db = open_results_db(settings)
    assert all(db.feedback_for(e.observation_id) == [] for e in review_queue(db, "species-id"))

    code, out, err, _ = _run(
        ["labels", "import", str(folder / "export.json"), "-p", "species-id", "--skip-invalid"], home
    )
    assert code == 0 and "stored 1 label(s) from 2 image(s), 1 skipped (errors above)" in out
    assert len(review_queue(db, "species-id")) == 1

    code, _, _, exc = _run(["labels", "queue", "-p", "no-such-pipeline"], home)
    assert code == 1 and isinstance(exc, NotFound) and "unknown pipeline 'no-such-pipeline'" in exc.message
