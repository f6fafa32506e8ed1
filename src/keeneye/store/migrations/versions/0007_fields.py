"""crop-health fields: the field registry (boundary in WGS84, crop, sowing date, geodesic area) and
one row per field and flight with what the flight saw there (docs/crop-health.md, "Fields, history
and prescriptions").

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONT = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TS = sa.DateTime(timezone=True)
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "fields",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("crop", sa.String(128), nullable=True),
        sa.Column("sowing_date", sa.Date(), nullable=True),
        sa.Column("boundary", JSONT, nullable=False),
        sa.Column("area_ha", sa.Double(), nullable=False),
        sa.Column("min_lon", sa.Double(), nullable=False),
        sa.Column("min_lat", sa.Double(), nullable=False),
        sa.Column("max_lon", sa.Double(), nullable=False),
        sa.Column("max_lat", sa.Double(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_fields"),
    )
    op.create_table(
        "field_flights",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("field_id", sa.String(64), nullable=False),
        sa.Column("flight", sa.String(64), nullable=False),
        sa.Column("observed_at", TS, nullable=False),
        sa.Column("observation_id", sa.String(32), nullable=True),
        sa.Column("joined_by", sa.String(16), nullable=False),
        sa.Column("indices", JSONT, nullable=False),
        sa.Column("disease_ha", JSONT, nullable=False),
        sa.Column("vigour_ha", JSONT, nullable=False),
        sa.Column("zones", JSONT, nullable=False),
        sa.Column("recorded_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["field_id"], ["fields.id"], name="fk_field_flights_field_id_fields", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_field_flights"),
        sa.UniqueConstraint("field_id", "flight", name="uq_field_flights_field_id"),
    )
    op.create_index("ix_field_flights_field_id_observed_at", "field_flights", ["field_id", "observed_at"])


def downgrade() -> None:
    op.drop_index("ix_field_flights_field_id_observed_at", table_name="field_flights")
    op.drop_table("field_flights")
    op.drop_table("fields")
