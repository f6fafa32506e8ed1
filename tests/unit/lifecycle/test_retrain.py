"""The retraining job end to end on tiny data, the dataset it builds, its CLI, API and Airflow example.

Training runs use a three-colour classification set at 32 px (a model learns it in two epochs, so a
champion is reliably good and a challenger trained on permuted labels reliably worse), a real SQLite
results database, a real directory object store and a real MLflow registry.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
import yaml

from keeneye.cli import main
from keeneye.cli._common import EXIT_GATES_REFUSED
from keeneye.domain import Task
from keeneye.lifecycle.retrain import (
    TIME_KEY,
    build_dataset,
    label_annotations,
    pseudo_label,
    run_retraining,
    time_splits,
)
from keeneye.lifecycle.runs import TrainingRunRecord, get_run, list_runs, request_run
from keeneye.lifecycle.triggers import request_manual
from keeneye.metrics import Metrics
from keeneye.pipelines import PipelineCatalog
from keeneye.registry import ModelRegistry, ModelVersionInfo
from keeneye.settings import Settings
from keeneye.store import ObjectStore, ResultsDB, open_object_store, open_results_db
from keeneye.training import load_coco
from tests.serving_support import LiveServer, fast_registry_store, register_species_model
from tests.unit.lifecycle.support import store_answer

# MLflow's SQL store uses an SQLAlchemy loader that SQLAlchemy 2.1 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

PIPELINE = "species-id"
TINY = {"backbone": "resnet10t", "image_size": 32, "batch_size": 8}
COLOURS = {"red": (40, 40, 220), "green": (40, 200, 40), "blue": (220, 60, 40)}  # BGR
BASE_TIME = datetime(2024, 1, 1, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[3]


def colour_image(name: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.array(COLOURS[name], np.float32)[None, None] + rng.normal(0, 25, (32, 32, 3))
    ok, buf = cv2.imencode(".jpg", np.clip(pixels, 0, 255).astype(np.uint8))
    assert ok
    return bytes(buf)


def colour_set(out: Path, n: int, *, seed: int = 0, relabel: dict[str, str] | None = None) -> Path:
    """A COCO folder of ``n`` colour images (classes in turn), one minute apart from 2024-01-01."""
    names = list(COLOURS)
    images, annotations = [], []
    (out / "images").mkdir(parents=True)
    for i in range(n):
        colour = names[i % 3]
        label = (relabel or {}).get(colour, colour)
        file_name = f"images/c{i:03d}.jpg"
        (out / file_name).write_bytes(colour_image(colour, seed * 1000 + i))
        when = (BASE_TIME + timedelta(minutes=i)).isoformat()
        images.append({"id": i + 1, "file_name": file_name, "width": 32, "height": 32, "captured_at": when})
        annotations.append(
            {"id": i + 1, "image_id": i + 1, "category_id": names.index(label) + 1, "bbox": [0, 0, 32, 32],
             "area": 1024, "iscrowd": 0, "segmentation": []}
        )  # fmt: skip
    categories = [{"id": k + 1, "name": c} for k, c in enumerate(names)]
    doc = {"images": images, "annotations": annotations, "categories": categories}
    (out / "annotations.json").write_text(json.dumps(doc))
    return out


def with_spec(settings: Settings, folder: Path, **gates: Any) -> Settings:
    """species-id with gates a tiny model can be judged by (a user spec file overriding the built-in)."""
    spec = PipelineCatalog(settings).get(PIPELINE).model_dump(mode="json", exclude_none=True)
    spec["gates"] = {"metrics": {"accuracy": 0.5}, "max_regression": 0.1, **gates}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{PIPELINE}.yaml").write_text(yaml.safe_dump(spec))
    return settings.model_copy(update={"pipelines": settings.pipelines.model_copy(update={"dirs": [folder]})})


def observe(
    db: ResultsDB, objects: ObjectStore, data: bytes, *, version: str, predicted: str, confidence: float
) -> str:
    """An observation with its image stored and the champion's (classification) answer."""
    result = {
        "task": "classify",
        "predicted_class": predicted,
        "confidence": confidence,
        "top_3_predictions": [{"class": predicted, "label": predicted, "probability": confidence}],
        "image": {"width": 32, "height": 32, "format": "jpeg"},
    }
    return store_answer(db, objects, PIPELINE, result, data, version=version, fmt="jpeg").observation_id


def label(db: ResultsDB, objects: ObjectStore, colour: str, seed: int, *, version: str = "1") -> str:
    obs = observe(db, objects, colour_image(colour, seed), version=version, predicted=colour, confidence=0.7)
    db.add_feedback(obs, {"class": colour}, "test")
    return obs


# --------------------------------------------------------------------------------------------------
# A trained champion, once per module; each test works on its own copy of the home folder
# --------------------------------------------------------------------------------------------------


@dataclass
class Home:
    settings: Settings
    db: ResultsDB
    objects: ObjectStore
    registry: ModelRegistry
    data: Path


@pytest.fixture(scope="module")
def champion_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from keeneye.training.run import train_pipeline

    root = tmp_path_factory.mktemp("champion")
    settings = with_spec(Settings(home=root / "home"), root / "pipelines")
    fast_registry_store(settings)
    db = open_results_db(settings)
    registry = ModelRegistry(settings, events=db)
    data = colour_set(root / "data", 30)
    result = train_pipeline(settings, PIPELINE, data, epochs=2, overrides=TINY, registry=registry)
    assert result.gates.passed, result.gates.reasons
    registry.promote(PIPELINE, str(result.version), actor="test", reason="first model")
    db.close()
    yield root


@pytest.fixture
def home(champion_home: Path, tmp_path: Path) -> Home:
    shutil.copytree(champion_home / "home", tmp_path / "home")
    settings = with_spec(Settings(home=tmp_path / "home"), tmp_path / "pipelines")
    db = open_results_db(settings)
    return Home(
        settings, db, open_object_store(settings), ModelRegistry(settings, events=db), champion_home / "data"
    )


def retrain(h: Home, inputs: dict[str, Any], metrics: Metrics | None = None) -> TrainingRunRecord:
    run = request_manual(h.db, PIPELINE, "test", {"overrides": TINY, "epochs": 2, **inputs})
    return run_retraining(h.settings, run.id, registry=h.registry, db=h.db, metrics=metrics)


# --------------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_retraining_adds_the_feedback_and_tests_on_the_newest_images(home: Home) -> None:
    labelled = [label(home.db, home.objects, colour, 100 + i) for i, colour in enumerate(list(COLOURS) * 3)]
    corrected = observe(
        home.db, home.objects, colour_image("red", 500), version="1", predicted="red", confidence=0.6
    )
    home.db.add_feedback(corrected, {"class": "blue"}, "test")
    home.db.add_feedback(corrected, {"class": "red"}, "review")  # the newest label wins
    gone = label(home.db, home.objects, "green", 600)
    home.objects.delete(_key_of(home, gone))  # retention removed its image
    not_trainable = observe(
        home.db, home.objects, colour_image("blue", 700), version="1", predicted="blue", confidence=0.6
    )
    home.db.add_feedback(not_trainable, {"decision": "DEFECT"}, "test")
    metrics = Metrics()

    run = retrain(home, {}, metrics)

    assert run.status == "succeeded", run.error or run.outcome
    o = run.outcome
    assert (o["version"], o["alias"]) == ("2", "challenger")
    assert o["gates"]["passed"] is True and o["gates"]["reasons"] == []
    assert o["champion"]["version"] == "1"
    assert set(o["champion"]["metrics"]) >= {"accuracy", "macro_f1"}
    assert o["metrics"]["accuracy"] >= 0.5
    assert o["fine_tuned_from"] == "1" and o["weights"].endswith("checkpoint.pt")
    assert o["dataset"]["base"] == 30 and o["dataset"]["feedback"] == 10 and o["dataset"]["pseudo"] == 0
    assert o["dataset"]["skipped"] == {"image_gone": 1, "label_not_trainable": 1}
    assert o["dataset"]["base_dir"] == str(home.data)
    assert o["split_sizes"] == [28, 6, 6]
    assert set(o["timings_s"]) >= {"dataset", "train", "total"}
    assert run.error is None and run.seconds is not None

    info = home.registry.get(PIPELINE, "2")
    assert "challenger" in info.aliases and info.gates == "passed"
    assert info.tags["data_version"] == o["data_version"]
    events = home.db.model_events(PIPELINE, limit=5)
    assert any(e.actor == "keeneye-retrain" and e.reason == "manual: test" for e in events)

    dataset = load_coco(o["dataset"]["dir"])
    by_name = {im.file_name: im for im in dataset.images}
    feedback = [im for im in dataset.images if im.metadata["keeneye_source"] == "feedback"]
    assert sorted(im.metadata["keeneye_observation_id"] for im in feedback) == sorted([*labelled, corrected])
    fixed = next(im for im in feedback if im.metadata["keeneye_observation_id"] == corrected)
    assert dataset.label_of(fixed) == "red" and fixed.metadata["label_source"] == "review"
    assert all(im.path.is_file() for im in dataset.images)

    split = json.loads((Path(o["run_dir"]) / "run" / "split.json").read_text())
    times = {name: by_name[name].metadata[TIME_KEY] for name in by_name}
    assert all(name.startswith("feedback/") for name in split["test"])
    assert min(times[n] for n in split["test"]) >= max(times[n] for n in split["train"] + split["val"])
    assert (
        metrics.registry.get_sample_value(
            "keeneye_training_runs_total", {"pipeline": PIPELINE, "cause": "manual", "status": "succeeded"}
        )
        == 1.0
    )


def _key_of(h: Home, observation_id: str) -> str:
    obs = h.db.get_observation(observation_id)
    assert obs is not None and obs.object_key is not None
    return obs.object_key


@pytest.mark.slow
def test_a_challenger_trained_on_permuted_labels_is_refused(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    permuted = colour_set(tmp_path / "permuted", 30, relabel={"red": "green", "green": "blue", "blue": "red"})
    for i, colour in enumerate(list(COLOURS) * 3):
        label(home.db, home.objects, colour, 200 + i)  # the newest: the test split, truly labelled

    queued = request_manual(
        home.db, PIPELINE, "test", {"overrides": TINY, "epochs": 2, "data_dir": str(permuted)}
    )
    # Through the CLI, as the scheduler and Airflow run it: a refused model exits 3, like `train`.
    monkeypatch.setenv("KEENEYE_HOME", str(home.settings.home))
    monkeypatch.setenv("KEENEYE_PIPELINES__DIRS", json.dumps([str(tmp_path / "pipelines")]))
    monkeypatch.setattr(sys, "argv", ["keeneye", "--quiet", "retrain", PIPELINE, "--run-id", str(queued.id)])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == EXIT_GATES_REFUSED == 3
    run = get_run(home.db, queued.id)

    assert run.status == "refused", run.error or run.outcome
    o = run.outcome
    assert o["version"] == "2" and o["alias"] is None
    assert o["champion"]["metrics"]["accuracy"] >= 0.9
    assert o["metrics"]["accuracy"] < 0.5
    reasons = " | ".join(o["gates"]["reasons"])
    assert "accuracy = " in reasons and "is below the floor 0.5000" in reasons
    assert "vs champion v1" in reasons and "worse than the allowed regression of 0.1" in reasons
    info = home.registry.get(PIPELINE, "2")
    assert info.aliases == () and info.gates == "failed"
    assert home.registry.resolve(PIPELINE, "champion").version == "1"  # type: ignore[union-attr]


def test_a_run_without_data_fails_with_the_reason(settings: Settings, tmp_path: Path) -> None:
    fast_registry_store(settings)
    db = open_results_db(settings)
    metrics = Metrics()
    run = request_manual(db, PIPELINE, "nothing yet", {})
    done = run_retraining(settings, run.id, db=db, metrics=metrics)
    assert done.status == "failed"
    assert done.error == (
        "nothing to retrain species-id on: no training data folder and no usable labelled observations "
        "— pass --data DIR, or label observations (keeneye labels export/import) first"
    )
    assert done.outcome["timings_s"]["total"] >= 0
    assert (
        metrics.registry.get_sample_value(
            "keeneye_training_runs_total", {"pipeline": PIPELINE, "cause": "manual", "status": "failed"}
        )
        == 1.0
    )
    assert list(settings.home.glob("runs/*/*/checkpoint.pt")) == []


# --------------------------------------------------------------------------------------------------
# The dataset (no training)
# --------------------------------------------------------------------------------------------------


def _champion(version: str = "1") -> ModelVersionInfo:
    return ModelVersionInfo(name=PIPELINE, version=version, aliases=("champion",), created=BASE_TIME)


def test_the_dataset_merges_base_and_feedback_and_drops_stale_entries(
    settings: Settings, tmp_path: Path
) -> None:
    db, objects = open_results_db(settings), open_object_store(settings)
    base = colour_set(tmp_path / "base", 6)
    doc = json.loads((base / "annotations.json").read_text())
    doc["images"][0]["metadata"] = {"pseudo": True}  # a previous retraining's pseudo-label
    (base / "annotations.json").write_text(json.dumps(doc))
    label(db, objects, "blue", 99)
    same_bytes = (base / "images" / "c001.jpg").read_bytes()  # a green training image …
    again = observe(db, objects, same_bytes, version="1", predicted="green", confidence=0.9)
    db.add_feedback(again, {"class": "blue"}, "test")  # … that a person says is blue

    spec = PipelineCatalog(settings).get(PIPELINE)
    built = build_dataset(db, objects, spec, tmp_path / "out", base_dir=base, champion=_champion())

    assert (built.base, built.feedback, built.pseudo) == (4, 2, 0)
    assert built.skipped == {"old_pseudo_label": 1, "base_replaced_by_feedback": 1}
    ds = load_coco(built.path)
    relabelled_image = next(im for im in ds.images if im.metadata.get("keeneye_observation_id") == again)
    assert ds.label_of(relabelled_image) == "blue"
    assert not any(im.file_name == "images/c001.jpg" for im in ds.images)
    base_image = next(im for im in ds.images if im.file_name == "images/c002.jpg")
    assert base_image.metadata[TIME_KEY] == "2024-01-01T00:02:00+00:00"  # from captured_at
    assert base_image.path.stat().st_ino == (base / "images" / "c002.jpg").stat().st_ino  # linked
    info = json.loads((built.path / "dataset.json").read_text())
    assert info["task"] == "classify" and info["keeneye"]["feedback"] == 2


def test_pseudo_labels_are_confident_capped_and_only_train(settings: Settings, tmp_path: Path) -> None:
    from keeneye.training.run import split_dataset

    db, objects = open_results_db(settings), open_object_store(settings)
    base = colour_set(tmp_path / "base", 8)
    for seed in (10, 11):
        obs = observe(db, objects, colour_image("red", seed), version="1", predicted="red", confidence=0.99)
        db.add_feedback(obs, {"class": "red"}, "test")  # confident, but people labelled it: no pseudo
    confident = [
        observe(db, objects, colour_image("green", 20 + k), version="1", predicted="green", confidence=0.99)
        for k in range(6)
    ]
    for k in range(2):
        observe(db, objects, colour_image("blue", 40 + k), version="1", predicted="blue", confidence=0.6)
        observe(db, objects, colour_image("blue", 50 + k), version="7", predicted="blue", confidence=0.99)

    spec = PipelineCatalog(settings).get(PIPELINE)
    built = build_dataset(
        db, objects, spec, tmp_path / "out", base_dir=base, champion=_champion(), pseudo_labels=True
    )

    assert (built.base, built.feedback, built.pseudo) == (8, 2, 2)  # 20 % of 12 at most
    ds = load_coco(built.path)
    pseudo = [im for im in ds.images if im.metadata.get("pseudo") is True]
    assert sorted(im.metadata["keeneye_observation_id"] for im in pseudo) == sorted(confident[-2:])  # newest
    assert {ds.label_of(im) for im in pseudo} == {"green"}
    assert all(im.metadata["pseudo_model_version"] == "1" for im in pseudo)
    assert len(pseudo) / len(ds.images) <= 0.2
    split_spec = spec.model_copy(update={"splits": time_splits(spec)})
    train, val, test = split_dataset(ds, split_spec)
    pseudo_names = {im.file_name for im in pseudo}
    assert pseudo_names <= {im.file_name for im in train}
    assert not pseudo_names & {im.file_name for im in val + test}
    assert all(im.metadata["keeneye_source"] == "feedback" for im in test)  # the newest real labels


# --------------------------------------------------------------------------------------------------
# Labels → COCO (pure)
# --------------------------------------------------------------------------------------------------

SQUARE = [10.0, 10.0, 20.0, 10.0, 20.0, 20.0, 10.0, 20.0]


@pytest.mark.parametrize(
    ("label", "task", "expected"),
    [
        ({"class": "esox_lucius"}, Task.classify, [("esox_lucius", (0.0, 0.0, 48.0, 32.0), 1536.0, None)]),
        ({"decision": "OK"}, Task.classify, None),
        ({"instances": []}, Task.segment, []),
        ({"decision": "OK"}, Task.segment, []),
        ({"decision": "DEFECT"}, Task.segment, None),  # no region: cannot teach where
        (
            {"instances": [{"class": "scratch", "segmentation": [SQUARE]}], "decision": "DEFECT"},
            Task.segment,
            [("scratch", (10.0, 10.0, 10.0, 10.0), 100.0, [SQUARE])],
        ),
        (
            {"instances": [{"class": "dent", "bbox": [1, 2, 3, 4]}]},
            Task.segment,
            [("dent", (1.0, 2.0, 3.0, 4.0), 12.0, None)],
        ),
        ({"instances": [{"class": "dent"}]}, Task.segment, None),  # neither box nor outline
        ({"instances": [{"class": "dent", "bbox": [1, 2, 0, 4]}]}, Task.segment, None),
    ],
)
def test_labels_become_coco_annotations(label: dict[str, Any], task: Task, expected: Any) -> None:
    got = label_annotations(label, task, 48, 32)
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert [(a.category, a.bbox, a.area, a.segmentation) for a in got] == expected


def test_pseudo_labels_take_only_confident_answers() -> None:
    assert pseudo_label({"predicted_class": "red", "confidence": 0.96}, Task.classify) == {"class": "red"}
    assert pseudo_label({"predicted_class": "red", "confidence": 0.94}, Task.classify) is None
    sure = {
        "class": "scratch",
        "score": 0.97,
        "box": [10, 10, 20, 20],
        "polygon": [[10, 10], [19, 10], [19, 19]],
    }
    unsure = {**sure, "score": 0.9}
    assert pseudo_label({"instances": [sure]}, Task.segment) == {
        "instances": [
            {
                "class": "scratch",
                "bbox": [10.0, 10.0, 10.0, 10.0],
                "segmentation": [[10.5, 10.5, 19.5, 10.5, 19.5, 19.5]],
            }
        ]
    }
    assert pseudo_label({"instances": [sure, unsure]}, Task.segment) is None
    assert pseudo_label({"instances": []}, Task.segment) is None


# --------------------------------------------------------------------------------------------------
# CLI, API, Airflow
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Any:
    from keeneye.cli import app, main
    from keeneye.cli.retrain import register

    if "retrain" not in {c.name for c in app.registered_commands}:
        register(app)  # until the CLI's module list names it

    def run(*args: str) -> int:
        monkeypatch.setenv("KEENEYE_HOME", str(settings.home))
        monkeypatch.setenv("COLUMNS", "200")
        monkeypatch.setattr(sys, "argv", ["keeneye", *args])
        with pytest.raises(SystemExit) as exc:
            main()
        return int(exc.value.code or 0)

    return run


def test_cli_retrain_refuses_bad_requests(cli: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("retrain", PIPELINE) == 2
    assert "a manual retraining needs a reason — add --reason TEXT" in capsys.readouterr().err
    assert cli("retrain", PIPELINE, "--run-id", "3", "--reason", "x") == 2
    assert "--reason cannot change it" in capsys.readouterr().err
    assert cli("retrain", PIPELINE, "--run-id", "3") == 2
    assert "no training run 3" in capsys.readouterr().err
    assert cli("retrain", "no-such-pipeline", "--reason", "x") == 2
    assert "no-such-pipeline" in capsys.readouterr().err


def test_cli_retrain_records_a_failed_run_and_runs_lists_it(
    cli: Any, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    fast_registry_store(settings)
    assert cli("retrain", PIPELINE, "--reason", "first try", "--epochs", "1") == 2
    out = capsys.readouterr()
    assert "run 1 of species-id queued" in out.out
    assert "run 1 of species-id (manual): failed" in out.out
    assert "nothing to retrain species-id on" in out.err

    assert cli("runs", PIPELINE, "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["cause"], r["status"], r["reason"]) for r in listed["runs"]] == [
        (1, "manual", "failed", "first try")
    ]
    assert listed["runs"][0]["inputs"]["epochs"] == 1
    assert listed["runs"][0]["inputs"]["requested_by"].startswith("cli")
    assert cli("runs", PIPELINE) == 0
    table = capsys.readouterr().out
    assert "manual" in table and "failed" in table and "nothing to retrain" in table
    assert cli("retrain", PIPELINE, "--run-id", "1") == 2
    assert "run 1 of species-id is failed, not queued" in capsys.readouterr().err


def test_runs_api_lists_newest_first(settings: Settings, tmp_path: Path) -> None:
    from keeneye.serving.routes import runs as runs_routes

    register_species_model(settings, tmp_path)
    db = open_results_db(settings)
    base = datetime.now(UTC)
    for k in range(3):
        request_run(db, PIPELINE, "drift", f"report {k}", f"drift:report:{k}", {"report_id": k},
                    now=base + timedelta(minutes=k), cooldown=timedelta(0))  # fmt: skip
        run = list_runs(db, PIPELINE, limit=1)[0]
        from keeneye.lifecycle.runs import finish, start

        start(db, run.id)
        finish(db, run.id, "refused", {"version": str(k + 2)})
    server = LiveServer(settings)
    if not any(getattr(r, "path", "") == "/v1/pipelines/{name}/runs" for r in server.app.routes):
        server.app.include_router(runs_routes.router)  # until create_app includes it
    server.start()
    try:
        body = httpx.get(f"{server.url}/v1/pipelines/{PIPELINE}/runs?limit=2").json()
        assert body["pipeline"] == PIPELINE
        assert [(r["id"], r["status"], r["inputs"]["report_id"]) for r in body["runs"]] == [
            (3, "refused", 2),
            (2, "refused", 1),
        ]
        assert body["runs"][0]["outcome"]["version"] == "4"
        assert httpx.get(f"{server.url}/v1/pipelines/{PIPELINE}/runs?limit=0").status_code == 422
        missing = httpx.get(f"{server.url}/v1/pipelines/nope/runs")
        assert missing.status_code == 404 and "nope" in missing.json()["detail"]
    finally:
        server.stop()
    assert get_run(db, 1).status == "refused"


def test_the_airflow_example_compiles_and_calls_keeneye_retrain() -> None:
    source = (REPO / "deploy" / "airflow" / "keeneye_retrain.py").read_text()
    compile(source, "keeneye_retrain.py", "exec")
    assert "keeneye retrain" in source and "--reason scheduled" in source
