"""Federated runs and their tasks: what each site was asked, and what it answered.

A run asks every chosen site one task (one round of one algorithm); a site's agent
fetches its pending tasks and posts one signed message per task. The message (only
aggregates, checked by :func:`sites.federated.messages.validate_message`) is kept
with the task, so a retried delivery is recognised and the run can be re-combined.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from consortium.db.base import Base, UTCDateTime, random_id, utcnow

#: Task states: waiting for the site, answered with statistics, refused by the site.
TASK_STATES = ("pending", "done", "refused")


class FederatedRun(Base):
    __tablename__ = "federated_runs"

    id: Mapped[int] = mapped_column(primary_key=True, default=random_id)
    kind: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    tasks: Mapped[list[FederatedTask]] = relationship(
        back_populates="run", order_by="FederatedTask.site_id"
    )


class FederatedTask(Base):
    __tablename__ = "federated_tasks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("federated_runs.id"), index=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    message: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    deliveries: Mapped[int] = mapped_column(Integer, default=0)
    run: Mapped[FederatedRun] = relationship(back_populates="tasks")
