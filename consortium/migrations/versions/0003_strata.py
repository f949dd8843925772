"""Strata of grants, researchers' released-set history, sites held by exports.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import consortium.db.base

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.add_column(sa.Column("history_key", sa.String(length=64), nullable=True))
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("strata", sa.JSON(), nullable=True))
    with op.batch_alter_table("proposal_exports", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sites", sa.JSON(), nullable=True))
    op.create_table(
        "released_sets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("proposal_id", sa.Integer(), nullable=False),
        sa.Column("query_id", sa.Integer(), nullable=False),
        sa.Column("created_at", consortium.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("n_subjects", sa.Integer(), nullable=False),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_released_sets_member_id_members")
        ),
        sa.ForeignKeyConstraint(
            ["proposal_id"], ["proposals.id"], name=op.f("fk_released_sets_proposal_id_proposals")
        ),
        sa.ForeignKeyConstraint(
            ["query_id"],
            ["proposal_queries.id"],
            name=op.f("fk_released_sets_query_id_proposal_queries"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_released_sets")),
    )
    with op.batch_alter_table("released_sets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_released_sets_member_id"), ["member_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_released_sets_proposal_id"), ["proposal_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("released_sets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_released_sets_proposal_id"))
        batch_op.drop_index(batch_op.f("ix_released_sets_member_id"))
    op.drop_table("released_sets")
    with op.batch_alter_table("proposal_exports", schema=None) as batch_op:
        batch_op.drop_column("sites")
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.drop_column("strata")
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.drop_column("history_key")
