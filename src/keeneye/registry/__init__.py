"""The model registry (MLflow): register bundles, move aliases under the gate invariant, audit, download."""

from keeneye.registry.client import registry_health
from keeneye.registry.mlflow_registry import ModelRegistry
from keeneye.registry.versions import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    SERVING_ALIASES,
    EventSink,
    GateStatus,
    ModelVersionInfo,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "PREVIOUS",
    "SERVING_ALIASES",
    "EventSink",
    "GateStatus",
    "ModelRegistry",
    "ModelVersionInfo",
    "registry_health",
]
