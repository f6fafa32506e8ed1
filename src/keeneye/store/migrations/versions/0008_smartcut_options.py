"""smartcut request options: what a request asked its plugin for beyond the seed's fields (e.g.
the classes of the ``objects`` plugin), sent with every ``{plugin}-new-files`` message
(docs/smartcut.md, "Request options").

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONT = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.add_column("smartcut_requests", sa.Column("options", JSONT, nullable=True))


def downgrade() -> None:
    op.drop_column("smartcut_requests", "options")
