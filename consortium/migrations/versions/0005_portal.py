"""Portal sessions, sign-in links and notifications (issue #14).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 22:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import consortium.db.base

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UTC = consortium.db.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "portal_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=True),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("last_seen_at", UTC, nullable=False),
        sa.Column("ended_at", UTC, nullable=True),
        sa.Column("end_reason", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["token_id"], ["tokens.id"], name=op.f("fk_portal_sessions_token_id_tokens")
        ),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_portal_sessions")),
    )
    with op.batch_alter_table("portal_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_portal_sessions_token_id"), ["token_id"], unique=False)
    op.create_table(
        "portal_signin_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("expires_at", UTC, nullable=False),
        sa.Column("used_at", UTC, nullable=True),
        sa.ForeignKeyConstraint(
            ["token_id"], ["tokens.id"], name=op.f("fk_portal_signin_links_token_id_tokens")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portal_signin_links")),
    )
    with op.batch_alter_table("portal_signin_links", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_portal_signin_links_secret_hash"), ["secret_hash"], unique=True
        )
        batch_op.create_index(
            batch_op.f("ix_portal_signin_links_token_id"), ["token_id"], unique=False
        )
    op.create_table(
        "portal_notifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("audience", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("link", sa.String(length=512), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("read_at", UTC, nullable=True),
        sa.Column("emailed_at", UTC, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portal_notifications")),
        sa.UniqueConstraint(
            "audience", "kind", "subject", name=op.f("uq_portal_notifications_audience")
        ),
    )
    with op.batch_alter_table("portal_notifications", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_portal_notifications_audience"), ["audience"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("portal_notifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_portal_notifications_audience"))
    op.drop_table("portal_notifications")
    with op.batch_alter_table("portal_signin_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_portal_signin_links_token_id"))
        batch_op.drop_index(batch_op.f("ix_portal_signin_links_secret_hash"))
    op.drop_table("portal_signin_links")
    with op.batch_alter_table("portal_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_portal_sessions_token_id"))
    op.drop_table("portal_sessions")
