"""Proposals: drafting, review, site consent, grants, exports and remote analyses.

Who may call what is decided here, per route, from the caller's role and the member
their token is bound to, before any body is validated or any proposal looked up for
a caller whose role may never use the route; the exact matrix is tested in
``tests/consortium/test_authorization_matrix.py``.
"""

from __future__ import annotations

import shutil
import uuid

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
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
from consortium.proposals.export import pack, write_export
from consortium.proposals.grants import (
    effective_sites,
    expire_due,
    grant_of,
    opted_out,
    require_usable_grant,
    revoke_grant,
)
from consortium.proposals.members import member_of, require_member
from consortium.proposals.models import AnalysisQuery, ExportRecord, Proposal
from consortium.proposals.remote import run_query
from consortium.proposals.schemas import (
    AnalysisRequest,
    AnalysisResult,
    ConsentCreate,
    ConsentOut,
    DuaAccept,
    DuaText,
    ExportOut,
    GrantOut,
    ProposalFields,
    ProposalOut,
    ProposalUpdate,
    VoteCreate,
    VoteOut,
)
from consortium.proposals.scope import GrantView, load_scoped
from consortium.proposals.settings import DUA_TEXT, DUA_VERSION, ProposalSettings
from sites.bundle import sha256_file

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
    raise ConfedError("forbidden", f"proposal {proposal.code} is not visible to this token", 403)


def _own(session: Session, identity: Identity, proposal: Proposal):
    member = require_member(session, identity, "researcher")
    if member.id != proposal.investigator_id:
        raise ConfedError(
            "forbidden", f"proposal {proposal.code} is not a proposal of member {member.id}", 403
        )
    return member


def proposer(
    code: str,
    identity: Identity = Depends(require_roles("researcher")),
    coord: Coordinator = Depends(get_coordinator),
) -> Identity:
    """The caller, once known to be the proposal's investigator (before the body is read)."""
    with coord.db.session() as session:
        _own(session, identity, lifecycle.get_proposal(session, code))
    return identity


def _settings(coord: Coordinator) -> ProposalSettings:
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
        rows = session.execute(select(Proposal).order_by(Proposal.id)).scalars().all()
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
        _own(session, identity, proposal)
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
        member = _own(session, identity, proposal)
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
        _own(session, identity, proposal)
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
    settings = _settings(coord)
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
            select(Vote).where(Vote.proposal_id == proposal.id).order_by(Vote.id)
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
        row = consent_mod.record_consent(
            session, proposal, identity.site_id, body.decision, body.comment, identity.actor
        )
        return ConsentOut.model_validate(row)


@router.post("/{code}/activate", response_model=ProposalOut, summary="Activate (committee)")
def post_activate(
    code: str,
    identity: Identity = Depends(committee),
    coord: Coordinator = Depends(get_coordinator),
) -> ProposalOut:
    with coord.db.session() as session:
        proposal = lifecycle.get_proposal(session, code)
        consent_mod.activate(session, proposal, identity.actor)
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
            _own(session, identity, proposal)
        consent_mod.close(session, proposal, identity.actor)
        return _out(session, proposal)


def _grant_out(session: Session, proposal: Proposal) -> GrantOut:
    grant = grant_of(session, proposal)
    out = GrantOut.model_validate(grant)
    out.effective_sites = [s for s in grant.sites if s not in opted_out(session, proposal)]
    return out


@router.get("/{code}/grant", response_model=GrantOut, summary="The grant (committee, holder)")
def get_grant(
    code: str,
    identity: Identity = Depends(swept("admin", "steering", "researcher")),
    coord: Coordinator = Depends(get_coordinator),
) -> GrantOut:
    with coord.db.session() as session:
        proposal = lifecycle.get_proposal(session, code)
        if identity.role not in ("admin", "steering"):
            _own(session, identity, proposal)
        out = _grant_out(session, proposal)
        audit.append(session, identity.actor, "grant.read", f"proposal:{proposal.code}", {})
        return out


@router.delete("/{code}/grant", response_model=GrantOut, summary="Revoke the grant (admin)")
def delete_grant(
    code: str,
    identity: Identity = Depends(require_roles("admin")),
    coord: Coordinator = Depends(get_coordinator),
) -> GrantOut:
    with coord.db.session() as session:
        proposal = lifecycle.get_proposal(session, code)
        revoke_grant(session, proposal, identity.actor)
        return _grant_out(session, proposal)


def _grant_view(coord: Coordinator, identity: Identity, code: str) -> GrantView:
    """Check the caller holds a usable grant; plain values for use outside the session."""
    with coord.db.session() as session:
        proposal = lifecycle.get_proposal(session, code)
        member = require_member(session, identity, "researcher")
        grant = require_usable_grant(session, proposal, member)
        return GrantView(
            proposal_code=proposal.code,
            title=proposal.title,
            release_name=grant.release_name,
            release_hash=grant.release_hash,
            sites=effective_sites(session, proposal, grant),
            columns=list(grant.columns),
            measures=list(grant.measures),
            pseudonym_key=grant.pseudonym_key,
            recipient={
                "member": str(member.id),
                "name": member.name,
                "institution": member.institution,
                "email": member.email,
                "token": str(identity.token_id),
            },
            expires_at=grant.expires_at.isoformat(),
        )


def grant_holder(
    code: str,
    identity: Identity = Depends(swept_researcher),
    coord: Coordinator = Depends(get_coordinator),
) -> GrantView:
    """The caller's usable grant on ``code``, checked before the body is read."""
    return _grant_view(coord, identity, code)


def _build_export(coord: Coordinator, view: GrantView, identity: Identity) -> ExportOut:
    data = load_scoped(coord.settings.root, coord.settings.db_url, view)
    folder = coord.settings.root / "proposal_exports" / view.proposal_code
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{view.proposal_code}-{uuid.uuid4().hex[:12]}"
    manifest = write_export(data, view, coord.store.tmp_dir / name)
    staged = coord.store.tmp_dir / name
    manifest_sha = sha256_file(staged / "manifest.json")
    tar = pack(staged, folder / f"{name}.tar")
    shutil.rmtree(staged)
    digest = sha256_file(tar)
    with coord.db.session() as session:
        proposal = lifecycle.get_proposal(session, view.proposal_code)
        record = ExportRecord(
            proposal_id=proposal.id,
            created_by=identity.actor,
            archive_sha256=digest,
            manifest_sha256=manifest_sha,
            n_subjects=manifest["n_subjects"],
            path=str(tar),
        )
        session.add(record)
        session.flush()
        audit.append(
            session,
            identity.actor,
            "proposal.export",
            f"proposal:{view.proposal_code}",
            {
                "export": record.id,
                "archive_sha256": digest,
                "sites": manifest["sites"],
                "columns": view.columns,
                "measures": view.measures,
                "n_subjects": manifest["n_subjects"],
                "release_hash": view.release_hash,
            },
        )
        return ExportOut(
            id=record.id, proposal=view.proposal_code, archive_sha256=digest, manifest=manifest
        )


@router.post(
    "/{code}/exports",
    response_model=ExportOut,
    status_code=201,
    summary="Build an export of the grant's data (grant holder)",
)
async def post_export(
    code: str,
    view: GrantView = Depends(grant_holder),
    identity: Identity = Depends(swept_researcher),
    coord: Coordinator = Depends(get_coordinator),
) -> ExportOut:
    return await run_in_threadpool(_build_export, coord, view, identity)


@router.get(
    "/{code}/exports/{export_id}",
    summary="Download an export archive (grant holder)",
    response_class=FileResponse,
)
def get_export(
    code: str,
    export_id: int,
    view: GrantView = Depends(grant_holder),
    identity: Identity = Depends(swept_researcher),
    coord: Coordinator = Depends(get_coordinator),
) -> FileResponse:
    with coord.db.session() as session:
        proposal = lifecycle.get_proposal(session, code)
        record = session.get(ExportRecord, export_id)
        if record is None or record.proposal_id != proposal.id:
            raise ConfedError("not_found", f"export {export_id} of {proposal.code} not found", 404)
        audit.append(
            session,
            identity.actor,
            "proposal.download",
            f"proposal:{view.proposal_code}/export:{export_id}",
            {"archive_sha256": record.archive_sha256},
        )
        path, digest = record.path, record.archive_sha256
    return FileResponse(
        path,
        media_type="application/x-tar",
        headers={"X-Content-SHA256": digest},
        filename=f"{view.proposal_code}-export-{export_id}.tar",
    )


def _run_analysis(
    coord: Coordinator, view: GrantView, identity: Identity, body: AnalysisRequest
) -> AnalysisResult:
    settings = _settings(coord)
    request = body.model_dump()
    with coord.db.session() as session:
        proposal = lifecycle.get_proposal(session, view.proposal_code)
        previous = {
            q.id: set(q.subjects)
            for q in session.execute(
                select(AnalysisQuery).where(
                    AnalysisQuery.proposal_id == proposal.id, AnalysisQuery.outcome == "released"
                )
            ).scalars()
        }
        proposal_id = proposal.id
    data = load_scoped(coord.settings.root, coord.settings.db_url, view)
    try:
        result, subjects = run_query(
            request, data, data.dx_labels, view.columns, settings.min_cell_size, previous
        )
    except ConfedError as err:
        with coord.db.session() as session:
            rule = getattr(err, "rule", err.code)
            session.add(
                AnalysisQuery(
                    proposal_id=proposal_id,
                    actor=identity.actor,
                    request=request,
                    subjects=[],
                    outcome="refused",
                    rule=rule,
                )
            )
            audit.append(
                session,
                identity.actor,
                "proposal.analysis.refused",
                f"proposal:{view.proposal_code}",
                {"rule": rule, "request": request},
            )
        raise
    with coord.db.session() as session:
        query = AnalysisQuery(
            proposal_id=proposal_id,
            actor=identity.actor,
            request=request,
            subjects=sorted(subjects),
            outcome="released",
        )
        session.add(query)
        session.flush()
        audit.append(
            session,
            identity.actor,
            "proposal.analysis",
            f"proposal:{view.proposal_code}",
            {"query": query.id, "request": request, "n_subjects": result["n_subjects"]},
        )
        return AnalysisResult(query_id=query.id, result=result)


@router.post(
    "/{code}/analyses",
    response_model=AnalysisResult,
    summary="Run an aggregate-only analysis on the grant's data (grant holder)",
)
async def post_analysis(
    code: str,
    body: AnalysisRequest,
    view: GrantView = Depends(grant_holder),
    identity: Identity = Depends(swept_researcher),
    coord: Coordinator = Depends(get_coordinator),
) -> AnalysisResult:
    return await run_in_threadpool(_run_analysis, coord, view, identity, body)
