"""smartcut requests: status, progress and segments of each video a user sent to a plugin
(docs/smartcut.md); chunks live on disk only until processed, these rows stay.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONT = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "smartcut_requests",
        sa.Column("uid", sa.String(36), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("plugin", sa.String(128), nullable=False),
        sa.Column("video_name", sa.String(255), nullable=False),
        sa.Column("sensitivity", sa.Double(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("frames_sampled", sa.Integer(), nullable=False),
        sa.Column("chunks_sent", sa.Integer(), nullable=False),
        sa.Column("chunks_processed", sa.Integer(), nullable=False),
        sa.Column("segments", JSONT, nullable=True),
        sa.Column("edits", JSONT, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("uid", name="pk_smartcut_requests"),
    )
    op.create_index("ix_smartcut_requests_user_id", "smartcut_requests", ["user_id"])
    op.create_index("ix_smartcut_requests_status", "smartcut_requests", ["status"])


def downgrade() -> None:
    op.drop_index("ix_smartcut_requests_status", table_name="smartcut_requests")
    op.drop_index("ix_smartcut_requests_user_id", table_name="smartcut_requests")
    op.drop_table("smartcut_requests")
