"""What keeneye knows of one registered model version: aliases, tags, gate status, audit sink.

Plain types with no MLflow import, so every reader of versions (CLI, API, lifecycle) can use them
without loading MLflow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from keeneye.domain import JsonObject, ModelRef

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"
SERVING_ALIASES = frozenset({CHAMPION, CHALLENGER})
ARTIFACT_PATH = "model"  # where a bundle lives inside its run's artifacts

# Tags on a model version.
TAG_SHA256 = "sha256"
TAG_TASK = "task"
TAG_OUTPUT_FORMAT = "output_format"
TAG_GATES = "gates"
TAG_METRICS = "metrics"
TAG_DATA_VERSION = "data_version"
FORCED_TAG_PREFIX = "forced_"
# Tag on the registered model: earlier champions, oldest first, so rollback can go back more than once.
TAG_CHAMPION_HISTORY = "keeneye.champion_history"
HISTORY_LIMIT = 20

GateStatus = Literal["passed", "failed", "unknown"]


class EventSink(Protocol):
    """Where alias moves and registrations are audited (the results DB's ``model_events`` table)."""

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
    ) -> int: ...


@dataclass(frozen=True)
class ModelVersionInfo:
    """One registered model version as keeneye sees it."""

    name: str
    version: str
    aliases: tuple[str, ...]
    created: datetime
    tags: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None
    source: str = ""

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name, self.version, CHAMPION if CHAMPION in self.aliases else None)

    @property
    def sha256(self) -> str:
        return self.tags.get(TAG_SHA256, "")

    @property
    def task(self) -> str:
        return self.tags.get(TAG_TASK, "")

    @property
    def output_format(self) -> str:
        return self.tags.get(TAG_OUTPUT_FORMAT, "")

    @property
    def gates(self) -> GateStatus:
        value = self.tags.get(TAG_GATES, "unknown")
        return value if value in ("passed", "failed") else "unknown"  # type: ignore[return-value]

    @property
    def metrics(self) -> dict[str, float]:
        """The manifest's scalar metrics, as stored at registration."""
        try:
            data = json.loads(self.tags.get(TAG_METRICS, "{}"))
        except ValueError:
            return {}
        return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def to_dict(self) -> JsonObject:
        """JSON-ready view (``keeneye models … --json``, ``GET /v1/models``)."""
        return {
            "name": self.name,
            "version": self.version,
            "aliases": list(self.aliases),
            "created": self.created.isoformat(),
            "task": self.task,
            "output_format": self.output_format,
            "gates": self.gates,
            "sha256": self.sha256,
            "metrics": dict(self.metrics),
            "run_id": self.run_id,
            "source": self.source,
            "tags": dict(self.tags),
        }
