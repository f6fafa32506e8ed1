"""A refused export keeps the trained weights: the error names ``checkpoint.pt`` and the file is there
(it used to be written only after a successful export, so a refused one lost the whole training)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

pytest.importorskip("torch")

import keeneye.training.export as export
from keeneye.domain import KeeneyeError
from keeneye.settings import Settings
from keeneye.training.run import CHECKPOINT_FILE, train_pipeline
from keeneye.training.synth.species import generate_species

pytestmark = pytest.mark.slow


def test_refused_export_keeps_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    generate_species(tmp_path / "data", 30, seed=1, size=32)
    # Bounds no export can meet: the real check, refusing for real.
    strict = functools.partial(export.check_parity, tolerance=-1.0, relative_tolerance=-1.0)
    monkeypatch.setattr(export, "check_parity", strict)
    with pytest.raises(KeeneyeError, match="ONNX export refused") as err:
        train_pipeline(
            Settings(home=tmp_path / "home"),
            "species-id",
            tmp_path / "data",
            epochs=1,
            overrides={"backbone": "resnet10t", "image_size": 32, "batch_size": 8},
            register=False,
        )
    kept = err.value.message.split("the trained weights are kept in ", 1)[1]
    assert kept.endswith(CHECKPOINT_FILE) and Path(kept).is_file()
