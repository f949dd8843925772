"""Accepted submissions (one per distinct bundle), their files, and every upload attempt."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from consortium.db.base import Base, UTCDateTime, random_id, utcnow


class Submission(Base):
    __tablename__ = "submissions"

    id: Mapped[int] = mapped_column(primary_key=True, default=random_id)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), index=True)
    bundle_hash: Mapped[str] = mapped_column(String(64), unique=True)
    format_version: Mapped[str] = mapped_column(String(32))
    n_subjects: Mapped[int] = mapped_column(Integer)
    subject_keys: Mapped[list[str]] = mapped_column(JSON, default=list)
    group_counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    flags: Mapped[list[str]] = mapped_column(JSON, default=list)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    received_by: Mapped[str] = mapped_column(String(128))
    superseded_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("submissions.id"), nullable=True
    )
    files: Mapped[list[SubmissionFile]] = relationship(
        back_populates="submission", order_by="SubmissionFile.path"
    )


class SubmissionFile(Base):
    __tablename__ = "submission_files"
    __table_args__ = (UniqueConstraint("submission_id", "path"),)

    id: Mapped[int] = mapped_column(primary_key=True, default=random_id)
    submission_id: Mapped[int] = mapped_column(ForeignKey("submissions.id"), index=True)
    path: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(ForeignKey("objects.sha256"))
    size: Mapped[int] = mapped_column(BigInteger)
    submission: Mapped[Submission] = relationship(back_populates="files")


class Upload(Base):
    """One upload or import attempt, accepted or not, so a site can see why."""

    __tablename__ = "uploads"

    id: Mapped[int] = mapped_column(primary_key=True, default=random_id)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), index=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    size: Mapped[int] = mapped_column(BigInteger)
    outcome: Mapped[str] = mapped_column(String(16))  # accepted / duplicate / rejected
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")
    bundle_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    submission_id: Mapped[int | None] = mapped_column(ForeignKey("submissions.id"), nullable=True)
