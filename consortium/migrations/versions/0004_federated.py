"""Federated runs and tasks (issue #16).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 22:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import consortium.db.base

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "federated_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("created_at", consortium.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_federated_runs")),
    )
    op.create_table(
        "federated_tasks",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", consortium.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("answered_at", consortium.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("message", sa.JSON(), nullable=True),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["federated_runs.id"], name=op.f("fk_federated_tasks_run_id_federated_runs")
        ),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.id"], name=op.f("fk_federated_tasks_site_id_sites")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_federated_tasks")),
    )
    with op.batch_alter_table("federated_tasks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_federated_tasks_run_id"), ["run_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_federated_tasks_site_id"), ["site_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_federated_tasks_status"), ["status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("federated_tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_federated_tasks_status"))
        batch_op.drop_index(batch_op.f("ix_federated_tasks_site_id"))
        batch_op.drop_index(batch_op.f("ix_federated_tasks_run_id"))
    op.drop_table("federated_tasks")
    op.drop_table("federated_runs")
