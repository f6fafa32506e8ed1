"""Drift windows shared by every process of a pipeline: ``drift_partials`` holds each process's share
of the open window (its bounded reservoirs) until one process closes the window for all of them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONT = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "drift_partials",
        sa.Column("token", sa.String(32), nullable=False),
        sa.Column("pipeline", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("payload", JSONT, nullable=False),
        sa.PrimaryKeyConstraint("token", name="pk_drift_partials"),
    )
    op.create_index(
        "ix_drift_partials_pipeline_model_version", "drift_partials", ["pipeline", "model_version"]
    )


def downgrade() -> None:
    op.drop_index("ix_drift_partials_pipeline_model_version", table_name="drift_partials")
    op.drop_table("drift_partials")
