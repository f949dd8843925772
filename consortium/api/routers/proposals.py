"""Proposals: drafting, review, votes and site consent (the proposal's lifecycle).

Who may call what is decided here, per route, from the caller's role and the member
their token is bound to, before any body is validated or any proposal looked up for
a caller whose role may never use the route; the exact matrix is tested in
``tests/consortium/test_authorization_matrix.py``. The grant, its exports and the
remote analyses of a proposal are routed by :mod:`consortium.api.routers.proposal_grants`
(same ``/proposals`` prefix and tag), which uses the access dependencies defined here.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy import select
from sqlalchemy.orm import Session

from consortium import audit
from consortium.api.deps import get_coordinator, get_identity, require_roles
from consortium.api.schemas import ERROR_RESPONSES
from consortium.auth import Identity
from consortium.coordinator import Coordinator
from consortium.errors import ConfedError
from consortium.proposals import consent as consent_mod
from consortium.proposals import lifecycle, review
from consortium.proposals.grants import (
    expire_due,
    fix_strata,
)
from consortium.proposals.members import member_of, require_member
from consortium.proposals.models import Proposal
from consortium.proposals.schemas import (
    ActivationRequest,
    ConsentCreate,
    ConsentOut,
    DuaAccept,
    DuaText,
    ProposalFields,
    ProposalOut,
    ProposalUpdate,
    VoteCreate,
    VoteOut,
)
from consortium.proposals.settings import DUA_TEXT, DUA_VERSION, ProposalSettings

router = APIRouter(prefix="/proposals", tags=["proposals"], responses=ERROR_RESPONSES)
committee = require_roles("admin", "steering")


def swept(*roles: str):
    """A dependency: the caller (with one of ``roles``, if given), after expired grants
    have been moved to ``expired`` (own transaction)."""
    check = require_roles(*roles) if roles else get_identity

    def _swept(
        identity: Identity = Depends(check), coord: Coordinator = Depends(get_coordinator)
    ) -> Identity:
        with coord.db.session() as session:
            expire_due(session)
        return identity

    return _swept


swept_identity = swept()
swept_researcher = swept("researcher")


def _out(session: Session, proposal: Proposal) -> ProposalOut:
    out = ProposalOut.model_validate(proposal)
    out.consents = consent_mod.consents(session, proposal)
    return out


def _hidden(proposal: Proposal) -> ConfedError:
    """What a caller who may not see ``proposal`` gets: the answer for no such proposal."""
    return ConfedError("not_found", f"proposal {proposal.code} not found", 404)


def _visible(session: Session, identity: Identity, proposal: Proposal) -> None:
    if identity.role in ("admin", "steering"):
        return
    if identity.role == "researcher":
        member = member_of(session, identity)
        if member is not None and member.id == proposal.investigator_id:
            return
    if identity.role == "site" and identity.site_id in proposal.sites:
        if proposal.status not in ("draft", "submitted", "under_review"):
            return
    raise _hidden(proposal)


def own_proposal(session: Session, identity: Identity, proposal: Proposal):
    """The caller's member, once known to be the proposal's investigator (else 404)."""
    member = require_member(session, identity, "researcher")
    if member.id != proposal.investigator_id:
        raise _hidden(proposal)
    return member


def proposer(
    code: str,
    identity: Identity = Depends(require_roles("researcher")),
    coord: Coordinator = Depends(get_coordinator),
) -> Identity:
    """The caller, once known to be the proposal's investigator (before the body is read)."""
    with coord.db.session() as session:
        own_proposal(session, identity, lifecycle.get_proposal(session, code))
    return identity


def proposal_settings(coord: Coordinator) -> ProposalSettings:
    """The coordinator's proposal settings (review, disclosure and age-band rules)."""
    return ProposalSettings.load(coord.settings.root)


@router.get("/terms", response_model=DuaText, summary="The current data-use agreement")
def get_terms(identity: Identity = Depends(get_identity)) -> DuaText:
    return DuaText(version=DUA_VERSION, text=DUA_TEXT)


@router.post("", response_model=ProposalOut, status_code=201, summary="Draft a proposal")
def post_proposal(
    body: ProposalFields,
    identity: Identity = Depends(require_roles("researcher")),
    coord: Coordinator = Depends(get_coordinator),
) -> ProposalOut:
    with coord.db.session() as session:
        member = require_member(session, identity, "researcher")
        proposal = lifecycle.create_proposal(
            session, coord.store, member, identity.actor, body.model_dump()
        )
        return _out(session, proposal)


@router.get("", response_model=list[ProposalOut], summary="Proposals visible to the caller")
def get_proposals(
    identity: Identity = Depends(swept_identity), coord: Coordinator = Depends(get_coordinator)
) -> list[ProposalOut]:
    with coord.db.session() as session:
        query = select(Proposal).order_by(Proposal.created_at, Proposal.id)
        rows = session.execute(query).scalars().all()
        out = []
        for proposal in rows:
            try:
                _visible(session, identity, proposal)
            except ConfedError:
                continue
            out.append(_out(session, proposal))
        audit.append(session, identity.actor, "proposal.list", "proposals", {"n": len(out)})
        return out


@router.get("/{code}", response_model=ProposalOut, summary="One proposal")
def get_one(
    code: str,
    identity: Identity = Depends(swept_identity),
    coord: Coordinator = Depends(get_coordinator),
) -> ProposalOut:
    with coord.db.session() as session:
        proposal = lifecycle.get_proposal(session, code)
        _visible(session, identity, proposal)
        audit.append(session, identity.actor, "proposal.read", f"proposal:{proposal.code}", {})
        return _out(session, proposal)


@router.patch("/{code}", response_model=ProposalOut, summary="Edit a draft (proposer)")
def patch_proposal(
    code: str,
    body: ProposalUpdate,
    identity: Identity = Depends(proposer),
    coord: Coordinator = Depends(get_coordinator),
) -> ProposalOut:
    with coord.db.session() as session:
        proposal = lifecycle.get_proposal(session, code)
        own_proposal(session, identity, proposal)
        changes = body.model_dump(exclude_unset=True)
        lifecycle.update_proposal(session, coord.store, proposal, identity.actor, changes)
        return _out(session, proposal)


@router.post("/{code}/dua", response_model=ProposalOut, summary="Accept the data-use agreement")
def post_dua(
    code: str,
    body: DuaAccept,
    identity: Identity = Depends(proposer),
    coord: Coordinator = Depends(get_coordinator),
) -> ProposalOut:
    with coord.db.session() as session:
        proposal = lifecycle.get_proposal(session, code)
        member = own_proposal(session, identity, proposal)
        lifecycle.accept_dua(session, proposal, member, body.version, identity.actor)
        return _out(session, proposal)


@router.post("/{code}/submit", response_model=ProposalOut, summary="Submit for review")
def post_submit(
    code: str,
    identity: Identity = Depends(proposer),
    coord: Coordinator = Depends(get_coordinator),
) -> ProposalOut:
    with coord.db.session() as session:
        proposal = lifecycle.get_proposal(session, code)
        own_proposal(session, identity, proposal)
        lifecycle.submit(session, proposal, identity.actor)
        return _out(session, proposal)


@router.post("/{code}/review", response_model=ProposalOut, summary="Open review (committee)")
def post_review(
    code: str,
    identity: Identity = Depends(committee),
    coord: Coordinator = Depends(get_coordinator),
) -> ProposalOut:
    with coord.db.session() as session:
        proposal = lifecycle.get_proposal(session, code)
        review.open_review(session, proposal, identity.actor)
        return _out(session, proposal)


@router.post("/{code}/votes", response_model=VoteOut, status_code=201, summary="Vote (steering)")
def post_vote(
    code: str,
    body: VoteCreate,
    identity: Identity = Depends(require_roles("steering")),
    coord: Coordinator = Depends(get_coordinator),
) -> VoteOut:
    settings = proposal_settings(coord)
    with coord.db.session() as session:
        proposal = lifecycle.get_proposal(session, code)
        member = require_member(session, identity, "steering")
        vote = review.cast_vote(
            session, settings, proposal, member, body.decision, body.comment, identity.actor
        )
        return VoteOut.model_validate(vote)


@router.get("/{code}/votes", response_model=list[VoteOut], summary="Votes (committee)")
def get_votes(
    code: str,
    identity: Identity = Depends(committee),
    coord: Coordinator = Depends(get_coordinator),
) -> list[VoteOut]:
    from consortium.proposals.models import Vote

    with coord.db.session() as session:
        proposal = lifecycle.get_proposal(session, code)
        rows = session.execute(
            select(Vote).where(Vote.proposal_id == proposal.id).order_by(Vote.cast_at, Vote.id)
        ).scalars()
        out = [VoteOut.model_validate(v) for v in rows]
        audit.append(session, identity.actor, "proposal.votes.read", f"proposal:{code}", {})
        return out


@router.post("/{code}/consent", response_model=ConsentOut, summary="Consent or opt out (site)")
def post_consent(
    code: str,
    body: ConsentCreate,
    identity: Identity = Depends(require_roles("site")),
    coord: Coordinator = Depends(get_coordinator),
) -> ConsentOut:
    with coord.db.session() as session:
        proposal = lifecycle.get_proposal(session, code)
        if identity.site_id not in proposal.sites:
            raise _hidden(proposal)
        row = consent_mod.record_consent(
            session, proposal, identity.site_id, body.decision, body.comment, identity.actor
        )
        return ConsentOut.model_validate(row)


@router.post("/{code}/activate", response_model=ProposalOut, summary="Activate (committee)")
def post_activate(
    code: str,
    body: ActivationRequest | None = None,
    identity: Identity = Depends(committee),
    coord: Coordinator = Depends(get_coordinator),
) -> ProposalOut:
    """Activate; ``strata`` fixes what the researcher may filter on (default: age bands)."""
    settings = proposal_settings(coord)
    with coord.db.session() as session:
        proposal = lifecycle.get_proposal(session, code)
        consent_mod.activate(session, proposal, identity.actor)
        strata = body.strata if body is not None else None
        fix_strata(session, proposal, strata, settings.age_bands, identity.actor)
        return _out(session, proposal)


@router.post("/{code}/close", response_model=ProposalOut, summary="Close (admin or proposer)")
def post_close(
    code: str,
    identity: Identity = Depends(require_roles("admin", "researcher")),
    coord: Coordinator = Depends(get_coordinator),
) -> ProposalOut:
    with coord.db.session() as session:
        proposal = lifecycle.get_proposal(session, code)
        if identity.role != "admin":
            own_proposal(session, identity, proposal)
        consent_mod.close(session, proposal, identity.actor)
        return _out(session, proposal)
