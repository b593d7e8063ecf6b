"""The tier history: one record per run, one row per account per run.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tiering_runs",
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_version", sa.String(200), nullable=False),
        sa.Column("review", sa.Boolean(), nullable=False),
        sa.Column("n_accounts", sa.Integer(), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("cutoffs", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(40), nullable=False),
        sa.PrimaryKeyConstraint("run_id", name="pk_tiering_runs"),
        sa.UniqueConstraint("as_of", name="uq_tiering_runs_as_of"),
    )
    op.create_table(
        "tiering_tier_history",
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(200), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("tier", sa.SmallInteger(), nullable=False),
        sa.Column("base_tier", sa.SmallInteger(), nullable=False),
        sa.Column("previous_tier", sa.SmallInteger(), nullable=True),
        sa.Column("tier_since", sa.Date(), nullable=False),
        sa.Column("ceiling", sa.SmallInteger(), nullable=False),
        sa.Column("priority", sa.Float(), nullable=False),
        sa.Column("owner", sa.String(200), nullable=True),
        sa.Column("territory", sa.String(200), nullable=True),
        sa.Column("change_code", sa.String(40), nullable=False),
        sa.Column("change_reason", sa.Text(), nullable=False),
        sa.Column("reason_summary", sa.Text(), nullable=False),
        sa.Column("model_version", sa.String(200), nullable=False),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.Column("drivers", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["tiering_runs.run_id"],
            name="fk_tiering_tier_history_run_id_tiering_runs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "account_id", name="pk_tiering_tier_history"),
    )
    op.create_index(
        "ix_tiering_tier_history_account_id_as_of",
        "tiering_tier_history",
        ["account_id", "as_of"],
    )


def downgrade() -> None:
    op.drop_index("ix_tiering_tier_history_account_id_as_of", "tiering_tier_history")
    op.drop_table("tiering_tier_history")
    op.drop_table("tiering_runs")
