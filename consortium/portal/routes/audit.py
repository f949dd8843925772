"""The audit log (admin): filter by actor, action and date, paginated; verify the chain."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from sqlalchemy import func, select

from consortium import audit
from consortium.api.deps import get_coordinator
from consortium.api.routers import audit as api
from consortium.auth import Identity
from consortium.coordinator import Coordinator
from consortium.db.models import AuditEntry
from consortium.errors import ConfedError
from consortium.portal.csrf import csrf_protect
from consortium.portal.render import Page, api_dependency, page, paginate
from consortium.portal.settings import PortalSettings

router = APIRouter(dependencies=[Depends(csrf_protect)])


def _day(value: str, name: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.combine(date.fromisoformat(value), time(), tzinfo=UTC)
    except ValueError as exc:
        raise ConfedError("invalid_request", f"{name}: {value[:40]!r} is not a date like "
                          "2026-01-31", 422) from exc


def entries(session, actor: str, action: str, since: str, until: str, number: int,
            size: int) -> Page:
    """One page of audit entries (newest first) matching the filters."""
    where = []
    if actor:
        where.append(AuditEntry.actor.contains(actor))
    if action:
        where.append(AuditEntry.action.startswith(action))
    start, end = _day(since, "from"), _day(until, "until")
    if start:
        where.append(AuditEntry.ts >= start)
    if end:
        where.append(AuditEntry.ts < end + timedelta(days=1))
    total = session.execute(select(func.count()).select_from(AuditEntry).where(*where)).scalar()
    number, pages, offset = paginate(total, number, size)
    rows = session.execute(select(AuditEntry).where(*where).order_by(AuditEntry.seq.desc())
                           .offset(offset).limit(size)).scalars().all()
    return Page(rows, number, pages, total)


@router.get("/audit", summary="The audit log (admin)")
def audit_page(
    request: Request,
    actor: str = Query("", max_length=128),
    action: str = Query("", max_length=64),
    since: str = Query("", alias="from", max_length=10),
    until: str = Query("", max_length=10),
    page_number: int = Query(1, alias="page", ge=1, le=1_000_000),
    identity: Identity = Depends(api_dependency(api.get_entries)),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    size = PortalSettings.load(coord.settings.root).page_size
    with coord.db.session() as session:
        pg = entries(session, actor, action, since, until, page_number, size)
        audit.append(session, identity.actor, "audit.read", "audit",
                     {"actor": actor, "action": action, "page": pg.number})
        filters = {"actor": actor, "action": action, "from": since, "until": until}
        return page(request, "audit.html", pg=pg, filters=filters, verified=None)


@router.post("/audit/verify", summary="Verify the chain and the signed checkpoints (admin)")
def audit_verify(
    request: Request,
    identity: Identity = Depends(api_dependency(api.verify)),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    verified = api.verify(identity=identity, coord=coord)
    size = PortalSettings.load(coord.settings.root).page_size
    with coord.db.session() as session:
        pg = entries(session, "", "", "", "", 1, size)
        filters = {"actor": "", "action": "", "from": "", "until": ""}
        return page(request, "audit.html", pg=pg, filters=filters, verified=verified)
