"""Named, immutable data releases and the exact submissions they contain."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, String, event
from sqlalchemy.orm import Mapped, mapped_column, relationship

from consortium.db.base import Base, UTCDateTime, random_id, utcnow


class Release(Base):
    __tablename__ = "releases"

    id: Mapped[int] = mapped_column(primary_key=True, default=random_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    release_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    excluded_subjects: Mapped[list[str]] = mapped_column(JSON, default=list)
    members: Mapped[list[ReleaseSubmission]] = relationship(
        back_populates="release", order_by="ReleaseSubmission.site_id"
    )


class ReleaseSubmission(Base):
    __tablename__ = "release_submissions"

    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), primary_key=True)
    submission_id: Mapped[int] = mapped_column(ForeignKey("submissions.id"), primary_key=True)
    site_id: Mapped[str] = mapped_column(String(64))
    bundle_hash: Mapped[str] = mapped_column(String(64))
    release: Mapped[Release] = relationship(back_populates="members")


class ImmutableReleaseError(RuntimeError):
    pass


@event.listens_for(Release, "before_update")
@event.listens_for(ReleaseSubmission, "before_update")
def _refuse_update(_mapper, _conn, target) -> None:
    raise ImmutableReleaseError(f"releases are immutable: refused to modify {target!r}")


@event.listens_for(Release, "before_delete")
@event.listens_for(ReleaseSubmission, "before_delete")
def _refuse_delete(_mapper, _conn, target) -> None:
    raise ImmutableReleaseError(f"releases are immutable: refused to delete {target!r}")
