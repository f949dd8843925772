"""Proposals: list, read (timeline, votes, grant), draft/edit/submit, vote, consent, activate.

Each action calls the API's endpoint function after the API endpoint's own
dependency admitted the caller (:func:`consortium.portal.render.api_dependency`).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import Response
from sqlalchemy import func, select

from consortium import audit
from consortium.api.deps import get_coordinator
from consortium.api.routers import proposal_grants
from consortium.api.routers import proposals as api
from consortium.auth import Identity
from consortium.coordinator import Coordinator
from consortium.db.models import AuditEntry
from consortium.errors import ConfedError
from consortium.portal.catalogue import catalogue
from consortium.portal.csrf import csrf_protect
from consortium.portal.render import Page, api_dependency, done, page, paginate, parse
from consortium.portal.settings import PortalSettings
from consortium.proposals import lifecycle, review
from consortium.proposals.members import member_of
from consortium.proposals.models import ExportRecord, Proposal
from consortium.proposals.schemas import (
    ConsentCreate,
    DuaAccept,
    ProposalFields,
    ProposalUpdate,
    VoteCreate,
)
from consortium.proposals.settings import DUA_TEXT, DUA_VERSION, ProposalSettings

router = APIRouter(dependencies=[Depends(csrf_protect)])
drafter = api_dependency(api.post_proposal)
proposer = api_dependency(api.patch_proposal)


def _visible_query(session, identity: Identity):
    """A query narrowing to the caller's proposals where SQL can; rows are then checked
    one by one with the API's own visibility rule."""
    query = select(Proposal)
    if identity.role == "researcher":
        member = member_of(session, identity)
        query = query.where(Proposal.investigator_id == (member.id if member else -1))
    elif identity.role == "site":
        query = query.where(Proposal.status.not_in(("draft", "submitted", "under_review")))
    return query


def _visible(session, identity: Identity, proposal: Proposal) -> bool:
    try:
        api._visible(session, identity, proposal)
    except ConfedError:
        return False
    return True


@router.get("/proposals", summary="Proposals visible to the caller")
def proposals_page(
    request: Request,
    status: str = Query("", max_length=32),
    page_number: int = Query(1, alias="page", ge=1, le=1_000_000),
    identity: Identity = Depends(api_dependency(api.get_proposals)),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    size = PortalSettings.load(coord.settings.root).page_size
    with coord.db.session() as session:
        query = _visible_query(session, identity)
        if status:
            query = query.where(Proposal.status == status)
        query = query.order_by(Proposal.created_at.desc(), Proposal.id.desc())
        if identity.role == "site":  # sites: JSON membership, checked row by row
            rows = [p for p in session.execute(query).scalars() if _visible(session, identity, p)]
            number, pages, offset = paginate(len(rows), page_number, size)
            pg = Page(rows[offset:offset + size], number, pages, len(rows))
        else:
            total = session.execute(select(func.count()).select_from(query.subquery())).scalar()
            number, pages, offset = paginate(total, page_number, size)
            rows = session.execute(query.offset(offset).limit(size)).scalars().all()
            pg = Page([p for p in rows if _visible(session, identity, p)], number, pages, total)
        audit.append(session, identity.actor, "proposal.list", "proposals", {"n": pg.total})
        return page(request, "proposals.html", pg=pg, status=status,
                    statuses=lifecycle.STATUSES)


def _timeline(session, code: str) -> list[AuditEntry]:
    return session.execute(
        select(AuditEntry).where(AuditEntry.target == f"proposal:{code}",
                                 AuditEntry.action.not_in(("proposal.read", "grant.read",
                                                           "proposal.votes.read")))
        .order_by(AuditEntry.seq).limit(200)
    ).scalars().all()


def _extras(coord: Coordinator, identity: Identity, code: str) -> dict:
    settings = ProposalSettings.load(coord.settings.root)
    out: dict = {"settings": settings, "votes": [], "grant": None, "exports": [], "coi": None}
    if identity.role in ("admin", "steering"):
        out["votes"] = api.get_votes(code=code, identity=identity, coord=coord)
    with coord.db.session() as session:
        proposal = lifecycle.get_proposal(session, code)
        member = member_of(session, identity)
        out["timeline"] = _timeline(session, proposal.code)
        out["own"] = member is not None and member.id == proposal.investigator_id
        if identity.role == "steering" and member is not None:
            out["coi"] = review.conflict(settings, proposal, member)
        if out["own"]:
            out["exports"] = session.execute(
                select(ExportRecord).where(ExportRecord.proposal_id == proposal.id)
                .order_by(ExportRecord.created_at.desc())).scalars().all()
        has_grant = proposal.status in ("approved", "active", "closed", "expired")
    if has_grant and (identity.role in ("admin", "steering") or out["own"]):
        out["grant"] = proposal_grants.get_grant(code=code, identity=identity, coord=coord)
    return out


@router.get("/proposals/new", summary="Draft a proposal from the catalogue (researcher)")
def new_page(
    request: Request,
    release: str = Query("", max_length=128),
    identity: Identity = Depends(drafter),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    settings = ProposalSettings.load(coord.settings.root)
    with coord.db.session() as session:
        cat = catalogue(session, coord.store, settings, release or None)
    return page(request, "proposal_form.html", cat=cat, proposal=None, action="/proposals")


def _fields(form) -> dict:
    return {
        "title": str(form.get("title", "")).strip(),
        "abstract": str(form.get("abstract", "")),
        "aims": str(form.get("aims", "")),
        "analysis_plan": str(form.get("analysis_plan", "")),
        "measures": [str(v) for v in form.getlist("measures")],
        "columns": [str(v) for v in form.getlist("columns")],
        "sites": [str(v) for v in form.getlist("sites")],
        "release_name": str(form.get("release_name", "")),
        "duration_months": str(form.get("duration_months", "")) or None,
    }


@router.post("/proposals", summary="Draft a proposal (researcher)")
async def create(
    request: Request,
    identity: Identity = Depends(drafter),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    body = parse(ProposalFields, **_fields(await request.form()))
    out = api.post_proposal(body=body, identity=identity, coord=coord)
    return done(f"/proposals/{out.code}", "created")


@router.get("/proposals/{code}", summary="One proposal: status timeline, votes, grant")
def proposal_page(
    code: str,
    request: Request,
    identity: Identity = Depends(api_dependency(api.get_one)),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    proposal = api.get_one(code=code, identity=identity, coord=coord)
    return page(request, "proposal.html", p=proposal, dua_text=DUA_TEXT,
                dua_version=DUA_VERSION, **_extras(coord, identity, proposal.code))


@router.get("/proposals/{code}/edit", summary="Edit a draft (proposer)")
def edit_page(
    code: str,
    request: Request,
    identity: Identity = Depends(proposer),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    settings = ProposalSettings.load(coord.settings.root)
    with coord.db.session() as session:
        proposal = lifecycle.get_proposal(session, code)
        cat = catalogue(session, coord.store, settings, proposal.release_name)
    return page(request, "proposal_form.html", cat=cat, proposal=proposal,
                action=f"/proposals/{proposal.code}/edit")


@router.post("/proposals/{code}/edit", summary="Save a draft (proposer)")
async def edit(
    code: str,
    request: Request,
    identity: Identity = Depends(proposer),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    fields = {k: v for k, v in _fields(await request.form()).items() if v is not None}
    body = parse(ProposalUpdate, **fields)
    out = api.patch_proposal(code=code, body=body, identity=identity, coord=coord)
    return done(f"/proposals/{out.code}", "saved")


@router.post("/proposals/{code}/submit", summary="Accept the DUA and submit (proposer)")
def submit(
    code: str,
    accept_dua: str = Form(""),
    identity: Identity = Depends(api_dependency(api.post_submit)),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    if accept_dua != "yes":
        raise ConfedError("dua_required", "tick the box to accept the data-use agreement", 422)
    api.post_dua(code=code, body=DuaAccept(version=DUA_VERSION), identity=identity, coord=coord)
    out = api.post_submit(code=code, identity=identity, coord=coord)
    return done(f"/proposals/{out.code}", "submitted")


@router.post("/proposals/{code}/votes", summary="Vote with a comment (steering)")
def vote(
    code: str,
    decision: str = Form("", max_length=16),
    comment: str = Form("", max_length=10_000),
    identity: Identity = Depends(api_dependency(api.post_vote)),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    body = parse(VoteCreate, decision=decision, comment=comment)
    api.post_vote(code=code, body=body, identity=identity, coord=coord)
    return done(f"/proposals/{code}", "voted")


@router.post("/proposals/{code}/consent", summary="Consent or opt out (site)")
def consent(
    code: str,
    decision: str = Form("", max_length=16),
    comment: str = Form("", max_length=10_000),
    identity: Identity = Depends(api_dependency(api.post_consent)),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    body = parse(ConsentCreate, decision=decision, comment=comment)
    api.post_consent(code=code, body=body, identity=identity, coord=coord)
    return done(f"/proposals/{code}", "consent")


@router.post("/proposals/{code}/activate", summary="Activate (committee)")
def activate(
    code: str,
    identity: Identity = Depends(api_dependency(api.post_activate)),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    api.post_activate(code=code, body=None, identity=identity, coord=coord)
    return done(f"/proposals/{code}", "activated")
