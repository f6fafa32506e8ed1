"""API key roles: each key is a viewer, an operator or an admin (``domain.Role``).

Keys made before roles existed could do everything, so they become ``admin``: nothing that worked
stops working.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "api_keys", sa.Column("role", sa.String(16), nullable=False, server_default=sa.text("'admin'"))
    )


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("role")
