"""Dashboard ("needs your attention") and the notifications feed (everyone signed in)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from sqlalchemy import func, select

from consortium.api.deps import get_coordinator, get_identity
from consortium.auth import Identity
from consortium.coordinator import Coordinator
from consortium.portal import mail, notify
from consortium.portal.csrf import csrf_protect
from consortium.portal.render import done, page
from consortium.portal.settings import PortalSettings
from consortium.proposals.members import member_of
from consortium.proposals.models import Proposal
from consortium.proposals.settings import ProposalSettings

router = APIRouter(dependencies=[Depends(csrf_protect)])
log = logging.getLogger("confed.coordinator")


def refresh(coord: Coordinator) -> None:
    """Sweep for new notifications and e-mail them (an SMTP failure is only logged)."""
    portal = PortalSettings.load(coord.settings.root)
    with coord.db.session() as session:
        new = notify.sweep(session, ProposalSettings.load(coord.settings.root))
        try:
            mail.deliver(session, portal, new)
        except OSError as exc:
            log.warning("notification e-mail not sent: %s", exc)


def _overview(session, identity: Identity) -> dict:
    counts = dict(session.execute(
        select(Proposal.status, func.count()).group_by(Proposal.status)).all())
    mine = []
    member = member_of(session, identity)
    if identity.role == "researcher" and member is not None:
        mine = session.execute(
            select(Proposal).where(Proposal.investigator_id == member.id)
            .order_by(Proposal.created_at.desc()).limit(10)).scalars().all()
    return {"counts": counts, "mine": mine, "member": member}


@router.get("/", summary="Dashboard")
def dashboard(
    request: Request,
    identity: Identity = Depends(get_identity),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    refresh(coord)
    size = PortalSettings.load(coord.settings.root).page_size
    with coord.db.session() as session:
        attention = notify.feed(session, identity, 1, size, unread_only=True)
        return page(request, "dashboard.html", attention=attention, **_overview(session, identity))


@router.get("/notifications", summary="Notifications feed")
def notifications(
    request: Request,
    page_number: int = Query(1, alias="page", ge=1, le=1_000_000),
    identity: Identity = Depends(get_identity),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    refresh(coord)
    size = PortalSettings.load(coord.settings.root).page_size
    with coord.db.session() as session:
        pg = notify.feed(session, identity, page_number, size)
        return page(request, "notifications.html", pg=pg)


@router.post("/notifications/read", summary="Mark every notification read")
def notifications_read(
    identity: Identity = Depends(get_identity), coord: Coordinator = Depends(get_coordinator)
) -> Response:
    with coord.db.session() as session:
        notify.mark_read(session, identity)
    return done("/notifications", "read")
