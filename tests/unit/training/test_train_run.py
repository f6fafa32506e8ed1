"""``train_pipeline`` end to end on tiny synthetic sets, and ``keeneye train`` on invalid data."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from keeneye.settings import Settings

# MLflow's SQL store uses an SQLAlchemy loader that SQLAlchemy 2.1 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

TINY = {"backbone": "resnet10t", "image_size": 32, "batch_size": 8}
TINY_SEG = {"backbone": "resnet18", "image_size": 32, "batch_size": 4}


class RecordingEvents:
    """An EventSink that keeps what the registry audits (the results DB does this in production)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def record_model_event(
        self,
        pipeline: str,
        event: str,
        *,
        model_version: str | None = None,
        from_version: str | None = None,
        alias: str | None = None,
        actor: str,
        reason: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> int:
        self.events.append({"pipeline": pipeline, "event": event, "version": model_version, "alias": alias})
        return len(self.events)


def _species(out: Path, n: int) -> Path:
    from keeneye.training.synth.species import generate_species

    generate_species(out, n, seed=3, size=32)
    return out


def _main(args: list[str], home: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    from keeneye.cli import main

    monkeypatch.setenv("KEENEYE_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "300")
    monkeypatch.setattr(sys, "argv", ["keeneye", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    return int(exc.value.code or 0)


def test_cli_train_refuses_a_coco_file_with_a_missing_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _species(tmp_path / "data", 12)
    (data / "images" / "fish_00003.jpg").unlink()
    code = _main(
        ["train", "--pipeline", "species-id", "--data", str(data), "--no-register"],
        tmp_path / "home",
        monkeypatch,
    )
    assert code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "images/fish_00003.jpg: image file does not exist" in err
    assert "training did not start" in err
    assert "--skip-invalid" in err
    assert not (tmp_path / "home" / "runs").exists()


def test_unknown_training_option_is_refused(tmp_path: Path) -> None:
    from keeneye.domain import KeeneyeError
    from keeneye.training.run import train_pipeline

    data = _species(tmp_path / "data", 10)
    with pytest.raises(KeeneyeError, match="unknown training option"):
        train_pipeline(
            Settings(home=tmp_path / "home"), "species-id", data, overrides={"bogus": 1}, register=False
        )


@pytest.mark.slow
def test_species_end_to_end_then_against_a_champion(tmp_path: Path) -> None:
    from keeneye.registry import ModelRegistry
    from keeneye.training.run import train_pipeline

    settings = Settings(home=tmp_path / "home")
    events = RecordingEvents()
    registry = ModelRegistry(settings, events=events)
    data = _species(tmp_path / "data", 40)

    first = train_pipeline(
        settings, "species-id", data, epochs=1, overrides=TINY, registry=registry, progress=None
    )
    assert first.version == "1"
    assert first.split_sizes == (28, 6, 6)
    assert first.parity.max_abs_diff <= 1e-3
    assert {"accuracy", "macro_f1", "latency_p95_ms"} <= set(first.metrics)
    assert [c.kind for c in first.gates.checks] == ["absolute", "absolute"]
    manifest = registry.download("species-id", "1").manifest
    assert manifest.metrics["macro_f1"] == first.metrics["macro_f1"]
    assert manifest.gates["passed"] is first.gates.passed
    assert manifest.data_version == first.data_version
    assert manifest.input.width == 32 and manifest.input.mean is not None
    profile = manifest.reference_profile
    assert profile is not None and profile["n_images"] == 28
    assert "brightness" in profile["features"] and len(profile["embedding"]["sample"]) == 28
    info = registry.get("species-id", "1")
    assert info.gates == ("passed" if first.gates.passed else "failed")
    assert ("challenger" in info.aliases) is first.gates.passed
    assert (first.run_dir / "evaluation" / "confusion_matrix.png").is_file()

    # The run's plots and report are MLflow artifacts of the same run as the model.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.registry_uri)
    logged = {a.path for a in client.list_artifacts(first.run_id, "evaluation")}
    assert {"evaluation/report.md", "evaluation/confusion_matrix.png", "evaluation/pr_curve.png"} <= logged
    run = client.get_run(first.run_id)
    assert run.data.params["data_version"] == first.data_version
    assert "test.macro_f1" in run.data.metrics

    # A champion now exists: the next run is also compared with it on the same test split, and one
    # broken file is skipped (and reported) instead of refusing the dataset.
    registry.promote("species-id", "1", actor="test", reason="baseline", force=True)
    (data / "images" / "fish_00007.jpg").write_bytes(b"not a jpeg")
    second = train_pipeline(
        settings, "species-id", data, epochs=1, overrides=TINY, registry=registry, skip_invalid=True
    )
    assert second.version == "2"
    assert second.validation.skipped == ["images/fish_00007.jpg"]
    assert second.gates.champion_version == "1"
    assert "regression" in {c.kind for c in second.gates.checks}
    assert second.data_version != first.data_version
    moves = [(e["event"], e["version"]) for e in events.events if e["event"] in {"registered", "promoted"}]
    assert moves == [("registered", "1"), ("promoted", "1"), ("registered", "2")]


@pytest.mark.slow
def test_line_inspection_tiny_run_has_instance_metrics(tmp_path: Path) -> None:
    from keeneye.training.run import train_pipeline
    from keeneye.training.synth.line import generate_line

    generate_line(tmp_path / "data", 28, seed=1, size=32, defect_rate=0.6, batch_size=4)
    result = train_pipeline(
        Settings(home=tmp_path / "home"),
        "line-inspection",
        tmp_path / "data",
        epochs=1,
        overrides=TINY_SEG,
        register=False,
    )
    assert result.version is None
    assert result.evaluation.details["labels"] == ["OK", "DEFECT"]
    assert {"mask_map50", "mask_map", "box_map50", "mean_iou"} <= set(result.metrics)
    assert "sku" in result.evaluation.subgroups
    assert json.loads((result.run_dir / "run" / "gates.json").read_text())["passed"] is result.gates.passed


@pytest.mark.slow
def test_crop_health_tiny_run_uses_bands_and_indices(tmp_path: Path) -> None:
    from keeneye.training.run import train_pipeline
    from keeneye.training.synth.crop import generate_crop

    generate_crop(tmp_path / "data", 16, seed=2, size=32, tiles_per_field=2)
    result = train_pipeline(
        Settings(home=tmp_path / "home"),
        "crop-health",
        tmp_path / "data",
        epochs=1,
        overrides=TINY_SEG,
        register=False,
    )
    from keeneye.models import ModelBundle

    manifest = ModelBundle.load(result.bundle_path).manifest
    assert manifest.input.channels == ["nir", "red_edge", "red", "green", "ndvi", "ndre", "gndvi"]
    assert manifest.class_names == ["background", "rust", "blight", "water_stress"]
    assert "ndvi_mean" in manifest.reference_profile["features"]  # type: ignore[index]
    assert "field_id" in result.evaluation.subgroups
    assert "mean_iou" in result.metrics or "mean_iou" in result.evaluation.details["undefined"]
