"""Request and response schemas of the HTTP API (never ORM rows)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ClassScore(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_: str = Field(..., alias="class", serialization_alias="class")
    label: str
    probability: float


class PredictResponse(BaseModel):
    """The answer of ``POST /v1/pipelines/{name}/predict``.

    Classification fills ``predicted_class`` … ``top_3_predictions``; detection and segmentation fill
    ``instances`` (and ``decision`` OK/DEFECT for inspection pipelines).
    """

    model_config = ConfigDict(extra="allow")

    pipeline: str
    task: str
    observation_id: str
    model_name: str
    model_version: str
    cached: bool
    processing_time_ms: float
    confidence: float | None = None
    predicted_class: str | None = None
    predicted_label: str | None = None
    top_3_predictions: list[dict[str, Any]] | None = None
    instances: list[dict[str, Any]] | None = None
    decision: str | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    image: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    """Every refusal: a stable ``reason`` code, one human line, and the fix when there is one."""

    reason: str
    detail: str
    fix: str | None = None


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    ready: bool
    models: dict[str, str]
    problems: dict[str, str] = Field(default_factory=dict)


class PipelineSummary(BaseModel):
    name: str
    title: str
    task: str
    model: str
    alias: str
    serving_version: str | None
    slo_p95_ms: float | None


class ObservationResponse(BaseModel):
    id: str
    pipeline: str
    status: str
    reason: str | None
    content_hash: str
    created_at: str
    updated_at: str
    metadata: dict[str, Any]
    result: dict[str, Any] | None = None
    model_version: str | None = None
