"""A model bundle: a folder holding ``model.onnx`` and its ``keeneye.json`` manifest."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from keeneye.domain import InvalidInput
from keeneye.models.manifest import MANIFEST_FILE, MODEL_FILE, ModelManifest


@dataclass(frozen=True)
class ModelBundle:
    path: Path
    manifest: ModelManifest

    @property
    def onnx_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    @classmethod
    def load(cls, path: Path) -> ModelBundle:
        """Read a bundle folder; raises :class:`InvalidInput` naming the missing or bad file."""
        path = Path(path)
        if not (path / MODEL_FILE).is_file():
            raise InvalidInput(
                "bad_bundle", f"{path} has no {MODEL_FILE}", fix="export the model to ONNX first"
            )
        if not (path / MANIFEST_FILE).is_file():
            raise InvalidInput(
                "bad_bundle", f"{path} has no {MANIFEST_FILE}", fix="write a manifest (see docs/models.md)"
            )
        return cls(path, ModelManifest.load(path / MANIFEST_FILE))

    @classmethod
    def write(cls, path: Path, onnx_bytes: bytes, manifest: ModelManifest) -> ModelBundle:
        path.mkdir(parents=True, exist_ok=True)
        (path / MODEL_FILE).write_bytes(onnx_bytes)
        (path / MANIFEST_FILE).write_text(manifest.dump())
        return cls(path, manifest)

    def sha256(self) -> str:
        """Content hash of the ONNX file: identifies the exact weights."""
        h = hashlib.sha256()
        with self.onnx_path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
