"""The model registry (MLflow): register bundles, move aliases under the gate invariant, audit, download."""

from keeneye.registry.mlflow_registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    SERVING_ALIASES,
    EventSink,
    GateStatus,
    ModelRegistry,
    ModelVersionInfo,
    registry_health,
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
