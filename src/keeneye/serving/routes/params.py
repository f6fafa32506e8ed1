"""Path parameters shared by the routes, with the formats and ranges the API accepts.

One type per kind of id, so every route that names an alert, a pipeline or an observation says the
same thing in the OpenAPI spec, and a value outside it is a 422 ``invalid_request`` before the route
runs: a row id past 64 bits never reaches SQL (where it overflowed into a 500), and a fuzzer or a
client generator learns the real shape of each id. The patterns repeat the ones the ids are made
with (``pipelines.spec.SLUG_PATTERN``, ``fields.boundary.FIELD_ID``); a unit test checks they agree.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

# SQL BIGINT: the widest integer id any table has (SQLite INTEGER, PostgreSQL BIGSERIAL).
MAX_ROW_ID = 2**63 - 1

PIPELINE_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
FIELD_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
MODEL_VERSION_PATTERN = r"^[1-9][0-9]{0,17}$"
REQUEST_UID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def _row_id(what: str) -> object:
    return Path(ge=1, le=MAX_ROW_ID, description=f"the {what}'s id (1 … 2⁶³−1)", examples=[1])


AlertId = Annotated[int, _row_id("alert")]
FeedbackId = Annotated[int, _row_id("feedback")]
PipelineName = Annotated[
    str,
    Path(
        pattern=PIPELINE_NAME_PATTERN,
        description="the pipeline (a lower-case slug; GET /v1/pipelines lists them)",
        examples=["species-id"],
    ),
]
ObservationId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=32,
        description="the observation's id (32 hex digits when keeneye made it)",
        examples=["0f3c2a9e5b7d4c1a8e6f2b3d4c5a6e7f"],
    ),
]
ModelVersion = Annotated[
    str,
    Path(pattern=MODEL_VERSION_PATTERN, description="a registered model version", examples=["1"]),
]
FieldId = Annotated[
    str,
    Path(
        pattern=FIELD_ID_PATTERN,
        description="the field's id (1–64 lower-case letters, digits, '-' or '_')",
        examples=["north-12"],
    ),
]
RequestUid = Annotated[
    str,
    Path(
        pattern=REQUEST_UID_PATTERN,
        description="the smartcut request's uid (a UUID, as POST /v1/smartcut/requests answered)",
        examples=["6f1c1b4e-2d1a-4c1e-9a55-0f0e2d6c7b8a"],
    ),
]

__all__ = [
    "FIELD_ID_PATTERN",
    "MAX_ROW_ID",
    "MODEL_VERSION_PATTERN",
    "PIPELINE_NAME_PATTERN",
    "REQUEST_UID_PATTERN",
    "AlertId",
    "FeedbackId",
    "FieldId",
    "ModelVersion",
    "ObservationId",
    "PipelineName",
    "RequestUid",
]
