"""Tables of proposal-based data access: members, proposals, votes, consents, grants.

Registered on ``Base.metadata`` by ``consortium.db.models``; created by the Alembic
revision ``0002_proposals``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from consortium.db.base import Base, UTCDateTime, random_id, utcnow


class Member(Base):
    """A named person: a researcher or a steering-committee member."""

    __tablename__ = "members"

    id: Mapped[int] = mapped_column(primary_key=True, default=random_id)
    name: Mapped[str] = mapped_column(String(256))
    institution: Mapped[str] = mapped_column(String(256))
    email: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(32))  # researcher / steering
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # HMAC key of the member's released-set history (made on first use, never handed out)
    history_key: Mapped[str | None] = mapped_column(String(64), nullable=True)


class MemberToken(Base):
    """Binds an API token to the member who holds it (and through them to their grants)."""

    __tablename__ = "member_tokens"

    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id"), primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"), index=True)


class Proposal(Base):
    __tablename__ = "proposals"

    id: Mapped[int] = mapped_column(primary_key=True, default=random_id)
    title: Mapped[str] = mapped_column(String(300))
    abstract: Mapped[str] = mapped_column(Text)
    aims: Mapped[str] = mapped_column(Text)
    analysis_plan: Mapped[str] = mapped_column(Text)
    investigator_id: Mapped[int] = mapped_column(ForeignKey("members.id"), index=True)
    institution: Mapped[str] = mapped_column(String(256))
    measures: Mapped[list[str]] = mapped_column(JSON, default=list)
    columns: Mapped[list[str]] = mapped_column(JSON, default=list)
    sites: Mapped[list[str]] = mapped_column(JSON, default=list)
    release_name: Mapped[str] = mapped_column(String(128))
    duration_months: Mapped[int] = mapped_column(Integer)
    dua_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    dua_accepted_by: Mapped[str | None] = mapped_column(String(256), nullable=True)
    dua_accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    status: Mapped[str] = mapped_column(String(32), default="draft")
    review_round: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    consent_deadline: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    @property
    def code(self) -> str:
        return f"P{self.id}"


class Vote(Base):
    __tablename__ = "proposal_votes"
    __table_args__ = (UniqueConstraint("proposal_id", "review_round", "member_id"),)

    id: Mapped[int] = mapped_column(primary_key=True, default=random_id)
    proposal_id: Mapped[int] = mapped_column(ForeignKey("proposals.id"), index=True)
    review_round: Mapped[int] = mapped_column(Integer)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"))
    decision: Mapped[str] = mapped_column(String(32))  # approve / reject / revise
    comment: Mapped[str] = mapped_column(Text, default="")
    cast_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Consent(Base):
    """A site's answer to a proposal that requests its data."""

    __tablename__ = "proposal_consents"

    proposal_id: Mapped[int] = mapped_column(ForeignKey("proposals.id"), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), primary_key=True)
    decision: Mapped[str] = mapped_column(String(16))  # consent / opt_out
    comment: Mapped[str] = mapped_column(Text, default="")
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    decided_by: Mapped[str] = mapped_column(String(128))


class Grant(Base):
    """What an approved proposal's investigator may receive, and until when."""

    __tablename__ = "grants"

    id: Mapped[int] = mapped_column(primary_key=True, default=random_id)
    proposal_id: Mapped[int] = mapped_column(ForeignKey("proposals.id"), unique=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"), index=True)
    measures: Mapped[list[str]] = mapped_column(JSON, default=list)
    columns: Mapped[list[str]] = mapped_column(JSON, default=list)
    sites: Mapped[list[str]] = mapped_column(JSON, default=list)
    release_name: Mapped[str] = mapped_column(String(128))
    release_hash: Mapped[str] = mapped_column(String(64))
    pseudonym_key: Mapped[str] = mapped_column(String(64))  # never leaves the coordinator
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # column -> band edges or levels, fixed at activation (None: the settings' default)
    strata: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class ExportRecord(Base):
    __tablename__ = "proposal_exports"

    id: Mapped[int] = mapped_column(primary_key=True, default=random_id)
    proposal_id: Mapped[int] = mapped_column(ForeignKey("proposals.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    archive_sha256: Mapped[str] = mapped_column(String(64))
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    n_subjects: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(512))
    sites: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)  # sites it holds


class AnalysisQuery(Base):
    """A remote analysis request and the subject set it used (for the differencing rule)."""

    __tablename__ = "proposal_queries"

    id: Mapped[int] = mapped_column(primary_key=True, default=random_id)
    proposal_id: Mapped[int] = mapped_column(ForeignKey("proposals.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))
    request: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    subjects: Mapped[list[str]] = mapped_column(JSON, default=list)
    outcome: Mapped[str] = mapped_column(String(16))  # released / refused
    rule: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ReleasedSet(Base):
    """The subject set of one released remote result, kept per researcher.

    ``groups`` maps ``"site/dx"`` to HMAC-SHA256 ids of the subjects (keyed with the
    member's ``history_key`` over site and subject key), so the sets of all the
    member's proposals can be compared without storing subject keys.
    """

    __tablename__ = "released_sets"

    id: Mapped[int] = mapped_column(primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"), index=True)
    proposal_id: Mapped[int] = mapped_column(ForeignKey("proposals.id"), index=True)
    query_id: Mapped[int] = mapped_column(ForeignKey("proposal_queries.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    n_subjects: Mapped[int] = mapped_column(Integer)
    groups: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
