"""The model bundle manifest (``keeneye.json``) that travels beside ``model.onnx``.

It says everything serving needs to use a model without guessing: the task, how to turn an image into
the input tensor, how to read the outputs, the classes and thresholds — plus where the model came from
(data version, metrics, gate results) and the drift reference profile of its training images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from keeneye.domain import InvalidInput, Task
from keeneye.imaging import InputSpec

OutputFormat = Literal["logits", "seg-logits", "yolo-detect", "yolo-segment"]

MANIFEST_FILE = "keeneye.json"
MODEL_FILE = "model.onnx"

TASK_OF_FORMAT: dict[str, Task] = {
    "logits": Task.classify,
    "seg-logits": Task.segment,
    "yolo-detect": Task.detect,
    "yolo-segment": Task.segment,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassInfo(_Strict):
    id: int = Field(..., ge=0)
    name: str = Field(..., min_length=1, description="stable machine name, e.g. esox_lucius")
    label: str = Field("", description="human label, e.g. 'Pike (Esox lucius)'; defaults to name")

    @property
    def display(self) -> str:
        return self.label or self.name


class Thresholds(_Strict):
    score: float = Field(0.25, ge=0, le=1, description="instances below this score are dropped")
    iou: float = Field(0.45, ge=0, le=1, description="NMS IoU threshold (YOLO formats)")
    mask: float = Field(0.5, ge=0, le=1, description="mask probability threshold")
    min_area: int = Field(0, ge=0, description="instances with fewer mask/box pixels are dropped")
    max_instances: int = Field(300, ge=1)
    top_k: int = Field(3, ge=1, description="classification: how many classes to report")


class ModelManifest(_Strict):
    schema_version: Literal[1] = 1
    name: str = Field(..., min_length=1, description="the pipeline (registered model name) it serves")
    task: Task
    output_format: OutputFormat
    input: InputSpec
    classes: list[ClassInfo] = Field(..., min_length=1)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    background_class: int | None = Field(
        None, description="seg-logits: the class index that means 'nothing here' (not an instance)"
    )
    embedding_output: str | None = Field(None, description="ONNX output with pooled features, for drift")
    data_version: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    gates: dict[str, Any] = Field(default_factory=dict, description="gate results at registration")
    reference_profile: dict[str, Any] | None = Field(
        None, description="drift reference of the training images"
    )
    created_at: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("classes", mode="before")
    @classmethod
    def _classes_from_names(cls, value: Any) -> Any:
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return [{"id": i, "name": n} for i, n in enumerate(value)]
        return value

    @model_validator(mode="after")
    def _check(self) -> ModelManifest:
        ids = [c.id for c in self.classes]
        if ids != list(range(len(ids))):
            raise ValueError("class ids must be 0..N-1 in order")
        if TASK_OF_FORMAT[self.output_format] != self.task:
            raise ValueError(
                f"output_format {self.output_format!r} does not produce task {self.task.value!r}"
            )
        return self

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @classmethod
    def parse(cls, raw: bytes | str | dict[str, Any], *, source: str = MANIFEST_FILE) -> ModelManifest:
        """Validate a manifest, raising :class:`InvalidInput` (reason ``bad_manifest``) with one line."""
        try:
            data = json.loads(raw) if isinstance(raw, bytes | str) else raw
            return cls.model_validate(data)
        except json.JSONDecodeError as exc:
            raise InvalidInput("bad_manifest", f"{source} is not valid JSON: {exc}") from exc
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            raise InvalidInput("bad_manifest", f"{source}: {where}: {err['msg']}") from exc

    @classmethod
    def load(cls, path: Path) -> ModelManifest:
        return cls.parse(path.read_bytes(), source=str(path))

    def dump(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=True)
