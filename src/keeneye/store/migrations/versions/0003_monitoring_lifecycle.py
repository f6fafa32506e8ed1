"""Monitoring and lifecycle: drift reports, alert silences and notifications, training runs,
rollouts, the review queue; feedback carries its pipeline; predictions indexed by pipeline and time.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSONT = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("feedback", sa.Column("pipeline", sa.String(128), nullable=True))
    op.execute(
        "UPDATE feedback SET pipeline = "
        "(SELECT observations.pipeline FROM observations WHERE observations.id = feedback.observation_id)"
    )
    op.create_index("ix_feedback_pipeline_created_at", "feedback", ["pipeline", "created_at"])
    op.create_index("ix_predictions_pipeline_created_at", "predictions", ["pipeline", "created_at"])
    op.create_index("ix_alerts_state_started_at", "alerts", ["state", "started_at"])

    op.create_table(
        "drift_reports",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("pipeline", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("window_start", TS, nullable=False),
        sa.Column("window_end", TS, nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("alarm", sa.Boolean(), nullable=False),
        sa.Column("features", JSONT, nullable=False),
        sa.Column("embedding", JSONT, nullable=False),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_drift_reports"),
    )
    op.create_index("ix_drift_reports_pipeline_window_end", "drift_reports", ["pipeline", "window_end"])

    op.create_table(
        "alert_silences",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("rule", sa.String(256), nullable=True),
        sa.Column("matchers", JSONT, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("starts_at", TS, nullable=False),
        sa.Column("ends_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alert_silences"),
    )
    op.create_index("ix_alert_silences_ends_at", "alert_silences", ["ends_at"])

    op.create_table(
        "alert_notifications",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("alert_id", BIGID, nullable=False),
        sa.Column("channel", sa.String(128), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("sent_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alerts.id"], name="fk_alert_notifications_alert_id_alerts", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_alert_notifications"),
    )
    op.create_index("ix_alert_notifications_alert_id", "alert_notifications", ["alert_id"])

    op.create_table(
        "training_runs",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("pipeline", sa.String(128), nullable=False),
        sa.Column("cause", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("dedup_key", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("inputs", JSONT, nullable=False),
        sa.Column("outcome", JSONT, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("requested_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_training_runs"),
    )
    op.create_index("ix_training_runs_pipeline_requested_at", "training_runs", ["pipeline", "requested_at"])

    op.create_table(
        "rollouts",
        sa.Column("pipeline", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("champion_version", sa.String(128), nullable=True),
        sa.Column("challenger_version", sa.String(128), nullable=True),
        sa.Column("canary_share", sa.Double(), nullable=False),
        sa.Column("shadow_sample", sa.Double(), nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("details", JSONT, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("pipeline", name="pk_rollouts"),
    )

    op.create_table(
        "review_queue",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("observation_id", sa.String(32), nullable=False),
        sa.Column("pipeline", sa.String(128), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("priority", sa.Double(), nullable=False),
        sa.Column("details", JSONT, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("resolved_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["observation_id"],
            ["observations.id"],
            name="fk_review_queue_observation_id_observations",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_review_queue"),
        sa.UniqueConstraint("observation_id", "reason", name="uq_review_queue_observation_reason"),
    )
    op.create_index("ix_review_queue_observation_id", "review_queue", ["observation_id"])
    op.create_index(
        "ix_review_queue_pipeline_resolved_at_priority",
        "review_queue",
        ["pipeline", "resolved_at", "priority"],
    )


def downgrade() -> None:
    for table in ("review_queue", "rollouts", "training_runs", "alert_notifications", "alert_silences"):
        op.drop_table(table)
    op.drop_index("ix_drift_reports_pipeline_window_end", table_name="drift_reports")
    op.drop_table("drift_reports")
    op.drop_index("ix_alerts_state_started_at", table_name="alerts")
    op.drop_index("ix_predictions_pipeline_created_at", table_name="predictions")
    op.drop_index("ix_feedback_pipeline_created_at", table_name="feedback")
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("pipeline")
