"""What a label may say for one pipeline: the model's classes (COCO category ids = position + 1) and
whether the pipeline decides OK / DEFECT. Both exports and the import use the same schema.
"""

from __future__ import annotations

from dataclasses import dataclass

from keeneye.domain import NotFound, Task
from keeneye.models import ModelManifest
from keeneye.pipelines import PipelineSpec
from keeneye.registry import ModelRegistry
from keeneye.settings import Settings


@dataclass(frozen=True)
class LabelClass:
    name: str
    label: str  # the human name


@dataclass(frozen=True)
class LabelSchema:
    """The classes a label may use (the served model's, background excluded) and the label's shape."""

    pipeline: str
    task: Task
    classes: tuple[LabelClass, ...]
    decision: bool = False  # an OK/DEFECT pipeline: labels carry a decision
    model_version: str | None = None

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def category_id(self, name: str) -> int:
        """COCO category id of a class: its position + 1 (COCO ids start at 1)."""
        return self.names.index(name) + 1

    @classmethod
    def from_manifest(
        cls, spec: PipelineSpec, manifest: ModelManifest, *, model_version: str | None = None
    ) -> LabelSchema:
        classes = tuple(
            LabelClass(c.name, c.display) for c in manifest.classes if c.id != manifest.background_class
        )
        return cls(
            pipeline=spec.name,
            task=manifest.task,
            classes=classes,
            decision=spec.decision.kind == "ok-defect",
            model_version=model_version,
        )


def load_label_schema(settings: Settings, spec: PipelineSpec) -> LabelSchema:
    """The schema of the model that serves ``spec`` (its alias in the registry); downloads the bundle
    once into the local model cache. Raises :class:`NotFound` when no model has that alias."""

    registry = ModelRegistry(settings)
    info = registry.resolve(spec.model_name, spec.model.alias)
    if info is None:
        raise NotFound(
            f"pipeline {spec.name!r} has no model with alias {spec.model.alias!r}, "
            "so the classes a label may use are unknown",
            fix=f"register one: keeneye models register --pipeline {spec.name} --alias {spec.model.alias} …",
        )
    bundle = registry.download(spec.model_name, info.version)
    return LabelSchema.from_manifest(spec, bundle.manifest, model_version=str(info.version))
