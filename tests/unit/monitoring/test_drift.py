"""Drift windows on a real SQLite file: when reports are written, what alarms, bounded memory, the
model-version switch, the API route through the real prediction path and ``keeneye drift report``.

Reference profiles are built with training's own :func:`reference_profile` from generated images, so
the format monitored here is exactly the one exported models carry.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from keeneye.cli import app as cli_app
from keeneye.cli import main as cli_main
from keeneye.domain import Answer, ModelRef
from keeneye.imaging import decode_image, embedding_projection
from keeneye.metrics import Metrics
from keeneye.models import MicroBatcher, OnnxModel
from keeneye.models.bundle import ModelBundle
from keeneye.models.testing import tiny_classifier
from keeneye.monitoring.drift import (
    CLASS_MIX,
    PROJECTION_SOURCE,
    DriftMonitor,
    DriftMonitors,
    DriftSample,
    drift_sample,
    embedding_of,
    latest_reports,
    reduce_embedding,
)
from keeneye.pipelines.runtime import LoadedModel
from keeneye.registry import ModelRegistry
from keeneye.serving import create_app
from keeneye.settings import MonitoringSettings, Settings
from keeneye.store import ResultsDB, open_results_db
from keeneye.training.export import distribution, reference_profile
from tests.serving_support import fast_registry_store, jpeg, species_manifest
from tests.unit.monitoring.drift_support import (
    Clock,
    drift_profile,
    feed,
    photos,
    results,
    window_settings,
)


@pytest.fixture(scope="module")
def profile() -> dict[str, Any]:
    return drift_profile()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> ResultsDB:
    results_db = ResultsDB(f"sqlite:///{tmp_path_factory.mktemp('drift') / 'results.db'}")
    results_db.ensure_schema()
    return results_db


def monitor(
    db: ResultsDB, pipeline: str, profile: dict[str, Any] | None, clock: Clock | None = None, **changes: Any
) -> DriftMonitor:
    return DriftMonitor(
        db, window_settings(**changes), pipeline, "1", profile, Metrics(), clock or Clock(), "test:1"
    )


def gauge(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


# --------------------------------------------------------------------------------------------------
# Windows and reports
# --------------------------------------------------------------------------------------------------


def test_no_report_before_500_then_one_stored_without_alarm(db: ResultsDB, profile: dict[str, Any]) -> None:
    m = monitor(db, "p-size", profile)
    closed = feed(m, results(500, seed=2))
    assert closed[:499] == [None] * 499
    record = closed[499]
    assert record is not None and record.n == 500 and m.pending() == 0
    assert latest_reports(db, "p-size") == [record]
    assert not record.alarm, record.alarms
    features = record.features
    assert {
        "brightness",
        "contrast",
        "mean_red",
        "sharpness",
        "confidence",
        "instance_count",
        CLASS_MIX,
    } <= set(features)
    brightness = features["brightness"]
    assert set(brightness) >= {"psi", "ks", "ks_p", "alarm", "reference", "current", "n"}
    assert brightness["reference"]["quantiles"] == profile["features"]["brightness"]["quantiles"]
    assert len(brightness["current"]["quantiles"]) == 21 and len(brightness["current"]["sample"]) == 200
    assert brightness["psi"] < 0.2 and brightness["n"] == 500 and brightness["bins"] == 20
    assert features["instance_count"]["psi"] == 0.0  # classification: always 1, like the reference
    assert (
        record.embedding["n_current"] == 256 and record.embedding["n_reference"] == 200
    )  # the profile keeps 200
    assert record.embedding["p_value"] >= 0.05 and not record.embedding["alarm"]
    assert m.metrics is not None
    assert gauge(m.metrics, "keeneye_drift_alarm", pipeline="p-size") == 0.0
    assert gauge(m.metrics, "keeneye_drift_windows_total", pipeline="p-size", alarm="false") == 1.0


def test_brightness_shift_alarms_and_sets_the_metrics(db: ResultsDB, profile: dict[str, Any]) -> None:
    m = monitor(db, "p-bright", profile)
    record = feed(m, results(500, seed=3, shift=45.0))[-1]
    assert record is not None and record.alarm
    assert record.features["brightness"]["alarm"] and record.features["brightness"]["psi"] > 1.0
    assert record.features["brightness"]["ks"] > 0.5 and record.features["brightness"]["ks_p"] < 1e-10
    assert "brightness" in record.alarms and "confidence" not in record.alarms
    metrics = m.metrics
    assert metrics is not None
    assert gauge(metrics, "keeneye_drift_alarm", pipeline="p-bright") == 1.0
    assert (
        gauge(metrics, "keeneye_drift_score", pipeline="p-bright", feature="brightness", test="psi")
        == (record.features["brightness"]["psi"])
    )
    assert gauge(metrics, "keeneye_drift_windows_total", pipeline="p-bright", alarm="true") == 1.0


def test_unchanged_data_rarely_alarms_across_many_features(db: ResultsDB, profile: dict[str, Any]) -> None:
    """A dozen tests run per window; Bonferroni keeps the window's false-alarm rate near 5%, not 5% per
    test (without it, about one unchanged window in eight alarmed)."""
    m = monitor(db, "p-quiet", profile)
    records = [feed(m, results(500, seed=100 + k))[-1] for k in range(20)]
    assert all(r is not None for r in records)
    alarms = [r.alarms for r in records if r is not None and r.alarm]
    # At 5% per window, 4 or more alarms in 20 has probability 1.6%; uncorrected it would be ~90%.
    assert len(alarms) <= 3, alarms
    first = records[0]
    assert first is not None
    n_tests = len([f for f in first.features.values() if f["ks"] is not None]) + 1  # + the embedding
    assert first.features["brightness"]["ks_alpha"] == pytest.approx(0.05 / n_tests, rel=1e-4)
    assert first.embedding["alpha"] == pytest.approx(0.05 / n_tests, rel=1e-4)


def test_class_mix_and_embedding_shifts_alarm_on_their_own(db: ResultsDB, profile: dict[str, Any]) -> None:
    only_a = feed(monitor(db, "p-mix", profile), results(500, seed=2, classes=("a",)))[-1]
    assert only_a.alarms == [CLASS_MIX]
    assert only_a.features[CLASS_MIX]["current"] == {"a": 1.0}
    assert only_a.features[CLASS_MIX]["psi"] > 2.0

    moved = feed(monitor(db, "p-emb", profile), results(500, seed=2, emb_shift=0.6))[-1]
    assert moved.alarms == ["embedding"]
    permutations = moved.embedding["permutations"]
    assert permutations >= 2 / moved.embedding["alpha"]  # the corrected level is reachable
    assert (
        moved.embedding["p_value"] == pytest.approx(1 / (permutations + 1)) and moved.embedding["mmd"] > 0.05
    )


def test_a_window_closes_by_time_only_with_enough_samples(db: ResultsDB, profile: dict[str, Any]) -> None:
    clock = Clock()
    m = monitor(db, "p-time", profile, clock, drift_window_seconds=60.0)
    items = results(60, seed=4)
    assert feed(m, items[:10]) == [None] * 10
    clock.t += 61  # time is up, but 11 < drift_min_samples = 50: keep accumulating
    assert feed(m, items[10:49]) == [None] * 39 and m.pending() == 49
    assert latest_reports(db, "p-time") == []
    record = feed(m, items[49:50])[0]
    assert record is not None and record.n == 50
    assert record.features["brightness"]["bins"] == 2  # 25 values per PSI bin (stats.coarsen)
    assert (record.window_end - record.window_start).total_seconds() == pytest.approx(61)

    assert feed(m, items[50:]) == [None] * 10
    assert m.tick() is None  # neither full nor old
    clock.t += 61
    assert m.tick() is None  # old, but 10 < 50
    assert m.flush() is None
    assert latest_reports(db, "p-time", limit=5) == [record]

    idle = monitor(db, "p-idle", profile, clock, drift_window_seconds=60.0)
    assert feed(idle, items[:50]) == [None] * 50
    clock.t += 60
    ticked = idle.tick()  # a periodic caller closes an idle pipeline's window: no prediction needed
    assert ticked is not None and ticked.n == 50 and idle.pending() == 0


def test_concurrent_adds_close_exactly_one_full_window(db: ResultsDB, profile: dict[str, Any]) -> None:
    m = monitor(db, "p-threads", profile)
    items = results(500, seed=13)
    closed: list[Any] = []
    threads = [
        threading.Thread(
            target=lambda part: closed.extend(r for r in feed(m, part) if r), args=(items[i::4],)
        )
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(closed) == 1 and closed[0].n == 500 and m.pending() == 0
    assert closed[0].features["brightness"]["n"] == 500


def test_latest_reports_are_newest_first_bounded_and_filtered(db: ResultsDB, profile: dict[str, Any]) -> None:
    clock = Clock()
    items = results(10, seed=5)
    m1 = monitor(db, "p-list", profile, clock, drift_window_size=10, drift_min_samples=5)
    first = feed(m1, items)[-1]
    clock.t += 100
    second = feed(m1, items)[-1]
    m2 = DriftMonitor(db, m1.settings, "p-list", "2", profile, None, clock, "test:1")
    clock.t += 100
    third = feed(m2, items)[-1]
    assert latest_reports(db, "p-list", limit=2) == [third, second]
    assert latest_reports(db, "p-list", model_version="1") == [second, first]
    assert latest_reports(db, "p-list", limit=10**9)[-1] == first  # capped, not refused
    assert third.model_version == "2" and third.source == "test:1"


def test_reservoirs_bound_memory_over_100k_observations(db: ResultsDB) -> None:
    values = np.arange(100_000, dtype=np.float64)
    rng = np.random.default_rng(0)
    ref = {
        "features": {name: distribution(values, rng=rng) for name in ("x", "y", "z")},
        "embedding": {
            "source": "model:embedding",
            "output": "embedding",
            "dim": 4,
            "sample": np.eye(4).tolist(),
        },
    }
    m = monitor(
        db,
        "p-memory",
        ref,
        drift_window_size=10**9,
        drift_reservoir=100,
        drift_embedding_reservoir=20,
        drift_publish_every=1000,  # 100 publishes: each merges the local window into the shared one
    )
    emb = np.ones(4, dtype=np.float32)
    for i, v in enumerate(values):
        # "w" has no reference: it is not kept at all.
        m.add(DriftSample(features={"x": float(v), "y": -float(v), "z": 1.0, "w": 2.0}, embedding=emb))
        if i == 998:
            early = m.footprint()  # 999 in the local window, nothing published yet
        if i == 1499:
            both = m.footprint()  # 1000 published, 500 local: both hold full reservoirs
    assert m.pending() == 100_000
    late = m.footprint()  # everything published, the local window empty
    assert late == early == {"values": 300, "embeddings": 20, "bytes": 3 * 100 * 8 + 20 * 4 * 4}
    assert both == {"values": 600, "embeddings": 40, "bytes": 2 * (3 * 100 * 8 + 20 * 4 * 4)}
    # Algorithm R plus 100 merges keep a uniform sample of everything seen, not the first 100 values.
    kept = m._published.values["x"].values()
    assert 35_000 < kept.mean() < 65_000 and kept.max() > 90_000 and kept.min() < 10_000
    [share] = db.drift_partials("p-memory", "1")  # the database holds one bounded share, too
    assert share.n == 100_000 and share.payload["values"]["x"]["kept"] == 100
    assert share.payload["values"]["x"]["seen"] == 100_000 and share.payload["embeddings"]["kept"] == 20


def test_without_a_reference_profile_nothing_is_collected(
    db: ResultsDB, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="keeneye.monitoring.drift"):
        m = monitor(db, "p-none", None, drift_window_size=10, drift_min_samples=5)
    assert "no reference profile" in caplog.text
    assert feed(m, results(20, seed=6)) == [None] * 20
    assert not m.active and m.pending() == 0 and m.flush() is None
    assert latest_reports(db, "p-none") == []


# --------------------------------------------------------------------------------------------------
# Samples and embeddings
# --------------------------------------------------------------------------------------------------


def test_drift_sample_of_classification_and_detection_results() -> None:
    quality = {"brightness": 0.4, "contrast": 0.1}
    cls = drift_sample(
        Answer.from_stored(
            {"task": "classify", "predicted_class": "pike", "confidence": 0.9, "image": {"quality": quality}}
        )
    )
    assert cls.features == {"brightness": 0.4, "contrast": 0.1, "instance_count": 1.0, "confidence": 0.9}
    assert cls.classes == ("pike",) and cls.embedding is None
    instances = [
        {"class": "scratch", "area_px": 10.0, "box": [0, 0, 2, 5], "score": 0.7},
        {"class": "dent", "area_px": 30.0, "box": [0, 0, 5, 6], "score": 0.6},
    ]
    det = drift_sample(
        Answer.from_stored({"task": "detect", "instances": instances, "confidence": 0.7, "count": 2})
    )
    assert det.features == {"instance_count": 2.0, "instance_area": 20.0, "confidence": 0.7}
    assert det.classes == ("scratch", "dent")
    empty = drift_sample(Answer.from_stored({"task": "segment", "instances": [], "confidence": None}))
    assert empty.features == {"instance_count": 0.0, "confidence": 0.0} and empty.classes == ()


def _bundle(tmp: Path, profile: dict[str, Any] | None, *, seed: int = 0) -> ModelBundle:
    manifest = species_manifest(embedding_output="pooled", reference_profile=profile)
    return ModelBundle.write(
        tmp / f"bundle-{seed}", tiny_classifier(5, seed=seed, with_embedding=True), manifest
    )


def _loaded(bundle: ModelBundle, version: str) -> LoadedModel:
    model = OnnxModel(bundle)
    return LoadedModel(
        ref=ModelRef("species-id", version, "champion"),
        bundle=bundle,
        model=model,
        batcher=MicroBatcher(model.run),
        pipeline="species-id",
    )


def test_embedding_of_takes_the_same_kind_as_the_profile(tmp_path: Path) -> None:
    model_profile = {
        "embedding": {"source": "model:pooled", "output": "pooled", "dim": 3, "sample": [[0, 0, 0]] * 2}
    }
    bundle = _bundle(tmp_path, model_profile)
    model = OnnxModel(bundle)
    image = photos(1, seed=9)[0]
    x = np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32)
    outputs = [o[0] for o in model.run(x)]
    got = embedding_of(model, bundle.manifest, outputs, image=image)
    assert got is not None and np.allclose(got, x[0].mean(axis=(1, 2)), atol=1e-5)  # the pooled features
    assert np.array_equal(embedding_of(["logits", "pooled"], bundle.manifest, outputs), got)
    assert embedding_of(["logits"], bundle.manifest, outputs[:1]) is None  # the model lacks that output

    projected = {"embedding": {"source": PROJECTION_SOURCE, "dim": 16, "seed": 3, "sample": [[0.0] * 16] * 2}}
    manifest = species_manifest(reference_profile=projected)
    got = embedding_of(["logits"], manifest, outputs[:1], image=image)
    assert got is not None and np.array_equal(got, embedding_projection(image, dim=16, seed=3))
    assert embedding_of(["logits"], manifest, outputs[:1]) is None  # no image, no projection
    assert embedding_of(["logits"], species_manifest(), outputs[:1], image=image) is None  # no profile


def test_wide_embeddings_are_reduced_identically_on_both_sides(db: ResultsDB) -> None:
    rng = np.random.default_rng(8)
    ref = {"embedding": {"source": "model:embedding", "output": "embedding", "dim": 300,
                         "sample": rng.normal(0, 1, (100, 300)).round(4).tolist()}}  # fmt: skip
    m = monitor(db, "p-wide", ref, drift_window_size=60, drift_min_samples=5)
    live = rng.normal(0, 1, (60, 300))
    record = [m.add(DriftSample(features={}, embedding=v)) for v in live][-1]
    assert record is not None and record.embedding["dim"] == 300 and record.embedding["reduced_dim"] == 64
    assert not record.embedding["alarm"]
    assert reduce_embedding(live).shape == (60, 64)
    assert np.allclose(reduce_embedding(live)[0], reduce_embedding(live[0]), atol=1e-4)
    assert reduce_embedding(live[:, :64]).shape == (60, 64)  # already small: unchanged


def test_monitors_follow_the_model_version_and_never_raise(
    db: ResultsDB, profile: dict[str, Any], tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path / "home", monitoring=window_settings())
    monitors = DriftMonitors(db, settings, Metrics(), clock=Clock(), source="test:2")
    sample = np.random.default_rng(0).normal(0, 1, (50, 3)).tolist()
    pooled = {
        **profile,
        "embedding": {"source": "model:pooled", "output": "pooled", "dim": 3, "sample": sample},
    }
    v1, v2 = _loaded(_bundle(tmp_path, pooled, seed=1), "1"), _loaded(_bundle(tmp_path, pooled, seed=2), "2")
    outputs = [np.zeros(5, np.float32), np.zeros(3, np.float32)]
    for result, _ in results(60, seed=10):
        monitors.observe("p-version", v1, Answer.from_stored(result), outputs)
    assert monitors.get("p-version").pending() == 60  # type: ignore[union-attr]
    assert latest_reports(db, "p-version") == []

    result = Answer.from_stored(results(1, seed=11)[0][0])
    assert monitors.observe("p-version", v2, result, outputs) is None
    flushed = latest_reports(db, "p-version")  # v1's partial window, closed by the switch
    assert [(r.model_version, r.n) for r in flushed] == [("1", 60)]
    assert flushed[0].embedding["n_current"] == 60  # the "pooled" output was taken as the embedding
    current = monitors.get("p-version")
    assert current is not None and current.model_version == "2" and current.pending() == 1
    monitors.observe("p-version", v1, result, outputs)  # a late request of the replaced version
    assert monitors.get("p-version") is current and current.pending() == 1

    dark = Answer.from_stored({"image": {"quality": {"brightness": "dark"}}})
    assert monitors.observe("p-version", v2, dark, outputs) is None
    assert monitors.errors == 1 and current.pending() == 1
    assert monitors.flush_all() == []  # 1 < drift_min_samples


# --------------------------------------------------------------------------------------------------
# API and CLI
# --------------------------------------------------------------------------------------------------


def _register(settings: Settings, tmp: Path, profile: dict[str, Any]) -> None:
    fast_registry_store(settings)
    db = open_results_db(settings)
    ModelRegistry(settings, events=db).register(
        "species-id", _bundle(tmp, profile), alias="champion", gates_passed=True
    )


@pytest.fixture
def drift_app(tmp_path: Path) -> Iterator[tuple[TestClient, Settings]]:
    """A served species-id model whose reference is dark photos; windows of 10 predictions."""
    settings = Settings(
        home=tmp_path / "home",
        monitoring=MonitoringSettings(drift_window_size=10, drift_min_samples=5, drift_permutations=20),
    )
    dark = [decode_image(jpeg((40, 40, 40), seed=s), max_pixels=10**8) for s in range(40)]
    _register(settings, tmp_path, reference_profile(dark, confidences=[0.5] * 40, instance_counts=[1.0] * 40))
    with TestClient(create_app(settings, poll_aliases=False)) as client:
        yield client, settings


@pytest.mark.slow  # a registered model and a served app: MLflow and model loading take seconds
def test_api_serves_the_window_closed_by_predictions(drift_app: tuple[TestClient, Settings]) -> None:
    client, _ = drift_app
    empty = client.get("/v1/pipelines/species-id/drift").json()
    assert empty["reports"] == [] and "a window closes after 10 predictions" in empty["note"]
    for seed in range(10):  # distinct bytes: cached answers are not observed twice
        r = client.post(
            "/v1/pipelines/species-id/predict", files={"file": ("f.jpg", jpeg(seed=seed), "image/jpeg")}
        )
        assert r.status_code == 200, r.text
    body = client.get("/v1/pipelines/species-id/drift", params={"limit": 5}).json()
    assert body["window"] == {"size": 10, "seconds": 3600.0, "min_samples": 5}
    [report] = body["reports"]
    assert report["n"] == 10 and report["model_version"] == "1" and report["alarm"]
    assert report["features"]["brightness"]["alarm"] and "brightness" in report["alarms"]
    assert report["embedding"] == {}  # this profile has no embedding
    metrics = client.get("/metrics").text
    assert 'keeneye_drift_alarm{pipeline="species-id"} 1.0' in metrics
    assert client.get("/v1/pipelines/fish/drift").status_code == 404
    assert client.get("/v1/pipelines/species-id/drift", params={"limit": 0}).status_code == 422


@pytest.mark.slow  # a registered model and a served app: MLflow and model loading take seconds
def test_an_idle_api_publishes_its_samples_to_the_shared_window(tmp_path: Path) -> None:
    """Fewer predictions than ``drift_publish_every`` and then silence: the lifespan's ticker still
    hands them to the pipeline-wide window, where other processes' samples meet them."""
    settings = Settings(
        home=tmp_path / "home",
        monitoring=MonitoringSettings(
            drift_window_size=100, drift_min_samples=50, drift_publish_every=50, drift_publish_seconds=0.2
        ),
    )
    dark = [decode_image(jpeg((40, 40, 40), seed=s), max_pixels=10**8) for s in range(40)]
    _register(settings, tmp_path, reference_profile(dark, confidences=[0.5] * 40, instance_counts=[1.0] * 40))
    with TestClient(create_app(settings, poll_aliases=False)) as client:
        for seed in range(7):
            r = client.post(
                "/v1/pipelines/species-id/predict", files={"file": ("f.jpg", jpeg(seed=seed), "image/jpeg")}
            )
            assert r.status_code == 200, r.text
        db = open_results_db(settings)
        deadline = time.monotonic() + 20
        while sum(p.n for p in db.drift_partials("species-id", "1")) < 7 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sum(p.n for p in db.drift_partials("species-id", "1")) == 7
        assert db.latest_drift_reports("species-id", 5) == []  # 7 < 50: no window closed


runner = CliRunner()


@pytest.fixture
def reported(tmp_path: Path, profile: dict[str, Any]) -> Settings:
    """A home whose results DB holds one alarming species-id window."""
    settings = Settings(home=tmp_path / "home")
    slim = {
        **profile,
        "features": {k: profile["features"][k] for k in ("brightness", "contrast")},
    }  # fewer plots
    m = DriftMonitor(open_results_db(settings), window_settings(), "species-id", "3", slim)
    assert feed(m, results(500, seed=12, shift=45.0))[-1] is not None
    return settings


@pytest.mark.slow  # matplotlib's import and five PNG plots take seconds on a busy machine
def test_cli_report_table_json_and_html(reported: Settings, tmp_path: Path) -> None:
    env = {"KEENEYE_HOME": str(reported.home), "COLUMNS": "200"}
    table = runner.invoke(cli_app, ["drift", "report", "--pipeline", "species-id"], env=env)
    assert table.exit_code == 0, table.output
    assert "model v3" in table.output and "brightness" in table.output and "ALARM" in table.output
    assert "MMD²" in table.output

    out = runner.invoke(cli_app, ["drift", "report", "-p", "species-id", "--json"], env=env)
    assert out.exit_code == 0, out.output
    [report] = json.loads(out.stdout)["reports"]
    assert report["n"] == 500 and report["alarm"] and report["features"]["brightness"]["psi"] > 1.0

    page = tmp_path / "drift.html"
    done = runner.invoke(cli_app, ["drift", "report", "-p", "species-id", "--html", str(page)], env=env)
    assert done.exit_code == 0, done.output
    text = page.read_text()
    assert text.count('<img src="data:image/png;base64,') == len(report["features"])
    assert "brightness" in text and "ALARM" in text and "<script" not in text


def test_cli_without_reports_explains_why(reported: Settings) -> None:
    env = {"KEENEYE_HOME": str(reported.home)}
    out = runner.invoke(cli_app, ["drift", "report", "--pipeline", "line-inspection", "--json"], env=env)
    assert out.exit_code == 0, out.output
    body = json.loads(out.stdout)
    assert body["reports"] == [] and "a window closes after 500 predictions, or after 3600 s" in body["note"]


def test_cli_unknown_pipeline_is_one_line_exit_2(
    reported: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KEENEYE_HOME", str(reported.home))
    monkeypatch.setattr(sys, "argv", ["keeneye", "drift", "report", "--pipeline", "fish"])
    with pytest.raises(SystemExit) as exc:
        cli_main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().count("\n") == 0
    assert "unknown pipeline 'fish'" in err
