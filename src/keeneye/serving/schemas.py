"""Request and response schemas of the HTTP API (never ORM rows)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

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


class FieldError(BaseModel):
    """One part of a request that does not match the API's schema."""

    loc: list[str | int] = Field(description="where: path / query / header / body, then the name")
    msg: str = Field(description="what is wrong with it")
    type: str = Field(description="a stable code, e.g. less_than_equal, string_pattern_mismatch")


class ErrorResponse(BaseModel):
    """Every refusal: a stable ``reason`` code, one human line, and the fix when there is one.

    A request that does not match the API's schema (a path id out of range, a missing field) is
    ``422 invalid_request`` and lists each refused part in ``errors``.
    """

    reason: str = Field(description="a stable machine-readable code, e.g. not_found, corrupt_image")
    detail: str = Field(description="one line for a person")
    fix: str | None = Field(None, description="what to do about it, when there is something to do")
    errors: list[FieldError] | None = Field(None, description="invalid_request: each refused part")


# What each refusal means when a route does not say more (the description beside the error model).
ERROR_MEANINGS: dict[int, str] = {
    400: "empty or malformed request",
    401: "API key missing or invalid",
    403: "the API key's role does not allow this",
    404: "not found (the detail names what)",
    409: "conflicts with the current state",
    413: "request or upload too large",
    415: "content type not accepted",
    422: "refused: the reason says why (invalid_request: the request does not match this schema)",
    429: "rate limit exceeded (Retry-After)",
    503: "busy, not ready or a dependency is down (Retry-After)",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route or router: each code answered with :class:`ErrorResponse`.

    ``error_responses(404, 409)``; a route that says more about one code merges
    :func:`error_response` after: ``{**error_responses(409), **error_response(404, "no such alert")}``.
    """
    return {code: {"model": ErrorResponse, "description": ERROR_MEANINGS[code]} for code in codes}


def error_response(code: int, description: str) -> dict[int | str, dict[str, Any]]:
    """One refusal with a route's own description of it."""
    return {code: {"model": ErrorResponse, "description": description}}


# Every API route may answer these: no or a weaker key, a request outside the schema, a dependency down.
API_ERRORS = error_responses(401, 403, 422, 503)

# The reason of a refusal raised as a plain HTTP error (access, limits, Starlette's routing).
HTTP_REASONS: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "busy",
}
INVALID_REQUEST_FIX = "send what the API's schema (/docs) allows for each part listed in errors"


def http_error_body(status: int, detail: Any) -> dict[str, Any]:
    """The :class:`ErrorResponse` body of a plain HTTP error; a ``detail`` that already is one (a
    mapping with a ``reason``) is kept as it is."""
    if isinstance(detail, dict) and "reason" in detail:
        return detail
    return {"reason": HTTP_REASONS.get(status, "error"), "detail": str(detail), "fix": None}


def invalid_request_body(errors: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``422 invalid_request`` body of a request that does not match the schema: one line naming
    the first refused part, and every part in ``errors`` (never the value sent: it may be large)."""
    items = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in errors
    ]
    if items:
        first = items[0]
        detail = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"[:300]
        if len(items) > 1:
            detail += f" (and {len(items) - 1} more)"
    else:
        detail = "the request does not match the API's schema"
    return {"reason": "invalid_request", "detail": detail, "fix": INVALID_REQUEST_FIX, "errors": items}


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


class AckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: str | None = Field(None, min_length=1, max_length=256, description="who (default: the caller)")


class SilenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: str | None = Field(None, description="silence this rule; omit to match by labels only")
    labels: dict[str, str] = Field(default_factory=dict, description="label → exact value, all must match")
    duration: str = Field(..., description="how long, e.g. 30m, 2h, 1d", examples=["2h"])
    reason: str = Field(..., min_length=1, max_length=2000)
    by: str | None = Field(None, min_length=1, max_length=256, description="who (default: the caller)")


class FeedbackCreated(BaseModel):
    id: int
    observation_id: str
    pipeline: str
    model_version: str
    source: str
    author: str | None
    label: dict[str, Any]


class FeedbackWithdrawn(BaseModel):
    """A withdrawn feedback (a reviewer's undo): what it said, and whether the item is back in review."""

    id: int
    observation_id: str
    source: str
    author: str | None
    label: dict[str, Any]
    queued_again: bool = Field(description="no other feedback is left: its review items are open again")


class ObservationLinks(BaseModel):
    self: str


class ObservationAccepted(BaseModel):
    id: str
    status: str
    links: ObservationLinks


class ReviewClass(BaseModel):
    name: str
    label: str


class ReviewItemResponse(BaseModel):
    observation_id: str
    priority: float
    reasons: list[str]
    details: dict[str, Any]
    queued_at: str | None
    observed_at: str
    resolved_at: str | None
    image_url: str | None = Field(description="the stored image; null when it was not stored")
    content_type: str
    model_version: str | None
    prediction: dict[str, Any] | None = Field(description="the champion's answer, as predict returned it")


class ReviewListResponse(BaseModel):
    pipeline: str
    task: str
    decision: bool = Field(description="the pipeline decides OK / DEFECT")
    model_version: str | None = Field(description="the model whose classes are listed")
    classes: list[ReviewClass] = Field(
        description="the classes a label may use; empty while no model is served"
    )
    items: list[ReviewItemResponse]


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["shadow", "canary", "promote", "abort"]
    share: float | None = Field(
        None, gt=0, le=1, description="canary: the share of inputs the challenger answers, 0.1 = 10 %"
    )
    sample: float | None = Field(None, ge=0, le=1, description="shadow: the share of inputs it also runs on")
    version: str | None = Field(
        None, pattern=r"^[1-9][0-9]*$", description="shadow/canary: make this version the challenger first"
    )
    reason: str = Field("", max_length=2000, description="recorded in the audit log")
    force: bool = Field(
        False,
        description="canary without shadow, promote from shadow, or a challenger whose gates failed "
        "(needs a reason)",
    )


class AliasMoveRequest(BaseModel):
    """Why the champion moves, and who moves it."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(..., min_length=1, max_length=2000, description="recorded in the audit log")
    by: str | None = Field(
        None, min_length=1, max_length=200, description="who (recorded with the key's name)"
    )
    force: bool = Field(False, description="promote a version whose gates failed (audited, with the reason)")
