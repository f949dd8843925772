"""Proposals: drafting, review, site consent, grants, exports and remote analyses.

Who may call what is decided here, per route, from the caller's role and the member
their token is bound to, before any body is validated or any proposal looked up for
a caller whose role may never use the route; the exact matrix is tested in
``tests/consortium/test_authorization_matrix.py``.
"""

from __future__ import annotations

import os
import shutil
import uuid

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from consortium import audit
from consortium.api.deps import get_coordinator, get_identity, require_roles
from consortium.api.schemas import ERROR_RESPONSES, IdPath
from consortium.auth import Identity
from consortium.coordinator import Coordinator
from consortium.errors import ConfedError
from consortium.proposals import consent as consent_mod
from consortium.proposals import history, lifecycle, review
from consortium.proposals.export import export_sites, pack, write_export
from consortium.proposals.grants import (
    effective_sites,
    effective_strata,
    expire_due,
    fix_strata,
    grant_of,
    opted_out,
    require_usable_grant,
    revoke_grant,
)
from consortium.proposals.members import member_of, require_member
from consortium.proposals.models import AnalysisQuery, ExportRecord, Proposal
from consortium.proposals.remote import run_query
from consortium.proposals.schemas import (
    ActivationRequest,
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


def _own(session: Session, identity: Identity, proposal: Proposal):
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
    settings = _settings(coord)
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
    settings = _settings(coord)
    with coord.db.session() as session:
        proposal = lifecycle.get_proposal(session, code)
        member = _own(session, identity, proposal)
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
            strata=effective_strata(grant, settings.age_bands),
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
    for owner_only in (folder.parent, folder):
        os.chmod(owner_only, 0o700)
    name = f"{view.proposal_code}-{uuid.uuid4().hex[:12]}"
    manifest = write_export(data, view, coord.store.tmp_dir / name)
    staged = coord.store.tmp_dir / name
    manifest_sha = sha256_file(staged / "manifest.json")
    tar = pack(staged, folder / f"{name}.tar")
    os.chmod(tar, 0o600)
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
            sites=list(manifest["sites"]),
        )
        session.add(record)
        session.flush()
        entry = audit.append(
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
            id=record.id,
            proposal=view.proposal_code,
            archive_sha256=digest,
            manifest=manifest,
            receipt=coord.receipt(entry.seq, entry.entry_hash),
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


#: Why a grant no longer reaches its exports (codes of :func:`require_usable_grant`).
GRANT_GONE = ("grant_revoked", "grant_expired", "grant_inactive", "no_sites")


def _withdrawn(code: str, export_id: int, sites: list[str]) -> ConfedError:
    return ConfedError(
        "export_withdrawn",
        f"export {export_id} of {code} holds data of site(s) {', '.join(sites)}, which opted "
        f"out of {code} after it was made; it can no longer be downloaded. Create a new export "
        f"(POST /api/v1/proposals/{code}/exports or `confed proposal export {code}`): it holds "
        "the consenting sites only",
        410,
    )


def _audit_refusal(
    session: Session, identity: Identity, code: str, export_id: int, err: ConfedError, sites=()
) -> None:
    audit.append(
        session,
        identity.actor,
        "export.download.refused",
        f"proposal:{code}/export:{export_id}",
        {"reason": err.code, "message": err.message, "sites": list(sites)},
    )


def download_holder(
    code: str,
    export_id: IdPath,
    identity: Identity = Depends(swept_researcher),
    coord: Coordinator = Depends(get_coordinator),
) -> GrantView:
    """The caller's usable grant, for a download of one of its exports.

    A revoked, expired or inactive grant (or one whose every site opted out) stops every
    download of its exports; the refusal is audited as ``export.download.refused``.
    """
    try:
        return _grant_view(coord, identity, code)
    except ConfedError as err:
        if err.code not in GRANT_GONE:
            raise
        status = 410 if err.code == "no_sites" else err.status
        refusal = ConfedError(
            err.code,
            f"{err.message}; export {export_id} of {code} can no longer be downloaded"
            + ("" if err.code == "no_sites" else " (the grant no longer covers its exports)"),
            status,
        )
        with coord.db.session() as session:
            proposal = lifecycle.get_proposal(session, code)
            _audit_refusal(session, identity, proposal.code, export_id, refusal)
        raise refusal from err


@router.get(
    "/{code}/exports/{export_id}",
    summary="Download an export archive (grant holder)",
    description="The `X-Confed-Receipt` header holds the signed receipt of the download (JSON).",
    response_class=FileResponse,
)
def get_export(
    code: str,
    export_id: IdPath,
    view: GrantView = Depends(download_holder),
    identity: Identity = Depends(swept_researcher),
    coord: Coordinator = Depends(get_coordinator),
) -> FileResponse:
    with coord.db.session() as session:
        proposal = lifecycle.get_proposal(session, code)
        record = session.get(ExportRecord, export_id)
        if record is None or record.proposal_id != proposal.id:
            raise ConfedError("not_found", f"export {export_id} of {proposal.code} not found", 404)
        withdrawn = sorted(set(export_sites(record.sites, record.path)) - set(view.sites))
        if withdrawn:
            refusal = _withdrawn(view.proposal_code, export_id, withdrawn)
            _audit_refusal(session, identity, view.proposal_code, export_id, refusal, withdrawn)
        else:
            entry = audit.append(
                session,
                identity.actor,
                "proposal.download",
                f"proposal:{view.proposal_code}/export:{export_id}",
                {"archive_sha256": record.archive_sha256},
            )
            path, digest = record.path, record.archive_sha256
            receipt = coord.receipt(entry.seq, entry.entry_hash).model_dump_json()
    if withdrawn:
        raise refusal
    return FileResponse(
        path,
        media_type="application/x-tar",
        headers={"X-Content-SHA256": digest, "X-Confed-Receipt": receipt},
        filename=f"{view.proposal_code}-export-{export_id}.tar",
    )


def _record_refusal(
    coord: Coordinator, view: GrantView, identity: Identity, proposal_id: int, request: dict, err
) -> None:
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


def _release(
    coord: Coordinator,
    view: GrantView,
    identity: Identity,
    proposal_id: int,
    request: dict,
    outcome: tuple[dict, object, list[str]],
    minimum: int,
) -> AnalysisResult:
    """Check the researcher's history (all proposals) and release, in one transaction."""
    result, frame, keys = outcome
    member_id = int(view.recipient["member"])
    with coord.db.session() as session:
        groups = history.check_and_hold(session, member_id, frame, keys, minimum)
        query = AnalysisQuery(
            proposal_id=proposal_id,
            actor=identity.actor,
            request=request,
            subjects=sorted(frame["subject"]),
            outcome="released",
        )
        session.add(query)
        session.flush()
        released = history.record(session, member_id, proposal_id, query.id, groups)
        entry = audit.append(
            session,
            identity.actor,
            "proposal.analysis",
            f"proposal:{view.proposal_code}",
            {
                "query": query.id,
                "request": request,
                "n_subjects": result["n_subjects"],
                "released_set": released.id,
            },
        )
        receipt = coord.receipt(entry.seq, entry.entry_hash)
        return AnalysisResult(query_id=query.id, result=result, receipt=receipt)


def _run_analysis(
    coord: Coordinator, view: GrantView, identity: Identity, body: AnalysisRequest
) -> AnalysisResult:
    settings = _settings(coord)
    request = body.model_dump()
    with coord.db.session() as session:
        proposal_id = lifecycle.get_proposal(session, view.proposal_code).id
    data = load_scoped(coord.settings.root, coord.settings.db_url, view)
    minimum = settings.min_cell_size
    try:
        result, frame = run_query(request, data, data.dx_labels, view.columns, minimum, view.strata)
        outcome = (result, frame, data.subject_keys)
        return _release(coord, view, identity, proposal_id, request, outcome, minimum)
    except ConfedError as err:
        _record_refusal(coord, view, identity, proposal_id, request, err)
        raise


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
