"""Rep overrides and intent-based elevations, kept beside the tier history.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tiering_overrides",
        sa.Column("override_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(200), nullable=False),
        sa.Column("tier", sa.SmallInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("set_by", sa.String(200), nullable=False),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("until", sa.Date(), nullable=True),
        sa.Column("cleared_by", sa.String(200), nullable=True),
        sa.Column("cleared_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("override_id", name="pk_tiering_overrides"),
    )
    op.create_index("ix_tiering_overrides_account_id", "tiering_overrides", ["account_id"])
    op.create_table(
        "tiering_elevations",
        sa.Column("elevation_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(200), nullable=False),
        sa.Column("started_on", sa.Date(), nullable=False),
        sa.Column("until", sa.Date(), nullable=False),
        sa.Column("base_tier", sa.SmallInteger(), nullable=False),
        sa.Column("signal", sa.Text(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("elevation_id", name="pk_tiering_elevations"),
    )
    op.create_index("ix_tiering_elevations_account_id", "tiering_elevations", ["account_id"])


def downgrade() -> None:
    op.drop_index("ix_tiering_elevations_account_id", "tiering_elevations")
    op.drop_table("tiering_elevations")
    op.drop_index("ix_tiering_overrides_account_id", "tiering_overrides")
    op.drop_table("tiering_overrides")
