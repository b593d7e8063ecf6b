"""SHAP values kept for reuse: each account's last explained values with what they were
computed from, the model-input fingerprint of every history row, and per run how many
accounts reused their values.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tiering_contributions",
        sa.Column("account_id", sa.String(200), nullable=False),
        sa.Column("explainer_key", sa.String(32), nullable=False),
        sa.Column("input_fingerprint", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("contributions", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", name="pk_tiering_contributions"),
    )
    op.create_index(
        "ix_tiering_contributions_explainer_key", "tiering_contributions", ["explainer_key"]
    )
    with op.batch_alter_table("tiering_tier_history") as table:
        table.add_column(sa.Column("input_fingerprint", sa.String(32), nullable=True))
    with op.batch_alter_table("tiering_runs") as table:
        table.add_column(sa.Column("reasons_reused", sa.Integer(), nullable=True))
        table.add_column(sa.Column("reasons_explained", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tiering_runs") as table:
        table.drop_column("reasons_explained")
        table.drop_column("reasons_reused")
    with op.batch_alter_table("tiering_tier_history") as table:
        table.drop_column("input_fingerprint")
    op.drop_index("ix_tiering_contributions_explainer_key", "tiering_contributions")
    op.drop_table("tiering_contributions")
