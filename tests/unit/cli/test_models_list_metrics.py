"""``keeneye models list`` shows the metrics each model is gated on, not the first three stored
(a segmentation model showed ``box_map=0``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from keeneye.cli import app
from tests.unit.registry.bundles import write_bundle

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

SEGMENT_METRICS = {
    "box_map": 0.0,
    "box_map50": 0.0,
    "mask_map": 0.31,
    "mask_map50": 0.52,
    "mean_iou": 0.61,
    "precision": 0.98,
    "recall": 0.96,
}


def _register(tmp_path: Path, env: dict[str, str], pipeline: str, **manifest: object) -> None:
    bundle = write_bundle(tmp_path / pipeline, pipeline, **manifest)
    args = ["models", "register", "--pipeline", pipeline, "--onnx", str(bundle.onnx_path)]
    result = CliRunner().invoke(app, [*args, "--manifest", str(bundle.manifest_path)], env=env)
    assert result.exit_code == 0, (result.output, result.exception)


def test_each_task_shows_its_gated_metrics(tmp_path: Path) -> None:
    env = {"KEENEYE_HOME": str(tmp_path / "home"), "COLUMNS": "250"}
    _register(tmp_path, env, "species-id")
    _register(
        tmp_path, env, "line-inspection", task="segment", output_format="seg-logits",
        classes=["background", "scratch", "dent"], metrics=SEGMENT_METRICS,
    )  # fmt: skip
    table = CliRunner().invoke(app, ["models", "list"], env=env).stdout
    line = next(row for row in table.splitlines() if "line-inspection" in row)
    # line-inspection gates precision and recall; a segmentation model is described by its masks.
    assert "precision=0.98, recall=0.96, mask_map50=0.52, mean_iou=0.61" in line
    assert "box_map" not in line
    species = next(row for row in table.splitlines() if "species-id" in row)
    assert "accuracy=0.91, macro_f1=0.88" in species
