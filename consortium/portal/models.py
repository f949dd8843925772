"""Portal tables: browser sessions, one-time sign-in links and in-app notifications.

Registered on ``Base.metadata`` by ``consortium.db.models``; created by the Alembic
revision ``0005_portal``. Session ids and link secrets are stored as SHA-256 only.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from consortium.db.base import Base, UTCDateTime, random_id, utcnow


class PortalSession(Base):
    """A signed-in browser: bound to one API token and to the role it had at sign-in."""

    __tablename__ = "portal_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id"), index=True)
    role: Mapped[str] = mapped_column(String(32))
    site_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    end_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)


class SigninLink(Base):
    """A one-time sign-in link issued by an admin for one token."""

    __tablename__ = "portal_signin_links"

    id: Mapped[int] = mapped_column(primary_key=True, default=random_id)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id"), index=True)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Notification(Base):
    """One in-app notification for an audience (``member:<id>``, ``site:<id>``, ``role:<r>``).

    ``(audience, kind, subject)`` is unique, so a condition seen again (a vote still
    due) is notified once.
    """

    __tablename__ = "portal_notifications"
    __table_args__ = (UniqueConstraint("audience", "kind", "subject"),)

    id: Mapped[int] = mapped_column(primary_key=True, default=random_id)
    audience: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(128))
    message: Mapped[str] = mapped_column(Text)
    link: Mapped[str] = mapped_column(String(512), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    emailed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
