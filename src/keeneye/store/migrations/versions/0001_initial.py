"""Initial schema: observations, predictions, feedback, model_events, alerts.

Revision ID: 0001
Revises:
Create Date: 2026-05-20

Written by hand to be identical in effect on SQLite and PostgreSQL; the column types are spelled out
here (not imported from the models) so this file keeps meaning the same schema as the models evolve.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def ts(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "observations",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("pipeline", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("object_key", sa.String(1024), nullable=True),
        sa.Column("content_type", sa.String(128), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        ts("created_at"),
        ts("updated_at"),
        ts("claimed_at", nullable=True),
        ts("completed_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_observations"),
    )
    op.create_index("ix_observations_pipeline", "observations", ["pipeline"])
    op.create_index("ix_observations_content_hash", "observations", ["content_hash"])
    op.create_index(
        "ix_observations_pipeline_status_updated_at", "observations", ["pipeline", "status", "updated_at"]
    )

    op.create_table(
        "predictions",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("observation_id", sa.String(32), nullable=False),
        sa.Column("pipeline", sa.String(128), nullable=False),
        sa.Column("model_name", sa.String(256), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("variant", sa.String(16), nullable=False),
        sa.Column("task", sa.String(16), nullable=False),
        sa.Column("result", JSON, nullable=False),
        sa.Column("decision", sa.String(16), nullable=True),
        sa.Column("confidence", sa.Double(), nullable=True),
        sa.Column("latency_ms", sa.Double(), nullable=False),
        sa.Column("timings", JSON, nullable=False),
        ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_predictions"),
        sa.ForeignKeyConstraint(
            ["observation_id"],
            ["observations.id"],
            name="fk_predictions_observation_id_observations",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "observation_id",
            "model_name",
            "model_version",
            "variant",
            name="uq_predictions_observation_model_variant",
        ),
    )
    op.create_index("ix_predictions_observation_id", "predictions", ["observation_id"])

    op.create_table(
        "feedback",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("observation_id", sa.String(32), nullable=False),
        sa.Column("label", JSON, nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("author", sa.String(256), nullable=True),
        ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
        sa.ForeignKeyConstraint(
            ["observation_id"],
            ["observations.id"],
            name="fk_feedback_observation_id_observations",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_feedback_observation_id", "feedback", ["observation_id"])

    op.create_table(
        "model_events",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("pipeline", sa.String(128), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=True),
        sa.Column("from_version", sa.String(128), nullable=True),
        sa.Column("alias", sa.String(128), nullable=True),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("details", JSON, nullable=False),
        ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_model_events"),
    )
    op.create_index("ix_model_events_pipeline", "model_events", ["pipeline"])

    op.create_table(
        "alerts",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("rule", sa.String(256), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("annotations", JSON, nullable=False),
        sa.Column("value", sa.Double(), nullable=True),
        ts("started_at"),
        ts("fired_at", nullable=True),
        ts("resolved_at", nullable=True),
        sa.Column("acked_by", sa.String(256), nullable=True),
        ts("acked_at", nullable=True),
        ts("silenced_until", nullable=True),
        sa.Column("escalation_level", sa.Integer(), server_default=sa.text("0"), nullable=False),
        ts("last_notified_at", nullable=True),
        ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
    )
    op.create_index("ix_alerts_fingerprint", "alerts", ["fingerprint"])


def downgrade() -> None:
    op.drop_table("alerts")
    op.drop_table("model_events")
    op.drop_table("feedback")
    op.drop_table("predictions")
    op.drop_table("observations")
