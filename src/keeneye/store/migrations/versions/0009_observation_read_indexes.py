"""Indexes for the reads of the observations table that scanned a whole pipeline (docs/storage.md,
"Indexes"): the line dashboard (``pipeline, source, created_at``: edge parts of a time window), the
observations list and retention (``pipeline, updated_at``: newest or oldest first without sorting the
pipeline; it replaces ``ix_observations_pipeline``, its prefix) and retention's check whether another
row still holds an image (``object_key``). Plans and timings: benchmarks/observation_indexes.py.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_observations_pipeline_source_created_at", "observations", ["pipeline", "source", "created_at"]
    )
    op.create_index("ix_observations_pipeline_updated_at", "observations", ["pipeline", "updated_at"])
    op.create_index("ix_observations_object_key", "observations", ["object_key"])
    op.drop_index("ix_observations_pipeline", table_name="observations")


def downgrade() -> None:
    op.create_index("ix_observations_pipeline", "observations", ["pipeline"])
    op.drop_index("ix_observations_object_key", table_name="observations")
    op.drop_index("ix_observations_pipeline_updated_at", table_name="observations")
    op.drop_index("ix_observations_pipeline_source_created_at", table_name="observations")
