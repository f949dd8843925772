"""Proposals, after activation: the grant, its exports and remote aggregate analyses.

Routes under ``/proposals/{code}`` (tag ``proposals``) for what a grant holder
does; the proposal's lifecycle is routed by :mod:`consortium.api.routers.proposals`,
whose access dependencies (:func:`~consortium.api.routers.proposals.swept`,
:func:`~consortium.api.routers.proposals.own_proposal`) decide who may call what
before any body is read; the exact matrix is tested in
``tests/consortium/test_authorization_matrix.py``.
"""

from __future__ import annotations

import os
import shutil
import uuid

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from consortium import audit
from consortium.api.deps import get_coordinator, require_roles
from consortium.api.routers.proposals import (
    own_proposal,
    proposal_settings,
    swept,
    swept_researcher,
)
from consortium.api.schemas import ERROR_RESPONSES, IdPath
from consortium.auth import Identity
from consortium.coordinator import Coordinator
from consortium.errors import ConfedError
from consortium.proposals import history, lifecycle
from consortium.proposals.export import export_sites, pack, write_export
from consortium.proposals.federated import run_federated_query
from consortium.proposals.grants import (
    effective_sites,
    effective_strata,
    grant_of,
    opted_out,
    require_usable_grant,
    revoke_grant,
)
from consortium.proposals.models import AnalysisQuery, ExportRecord, Proposal
from consortium.proposals.remote import run_query
from consortium.proposals.schemas import (
    AnalysisRequest,
    AnalysisResult,
    ExportOut,
    GrantOut,
)
from consortium.proposals.scope import GrantView, load_scoped
from sites.bundle import sha256_file

router = APIRouter(prefix="/proposals", tags=["proposals"], responses=ERROR_RESPONSES)


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
            own_proposal(session, identity, proposal)
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
    settings = proposal_settings(coord)
    with coord.db.session() as session:
        proposal = lifecycle.get_proposal(session, code)
        member = own_proposal(session, identity, proposal)
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
    settings = proposal_settings(coord)
    request = body.model_dump()
    with coord.db.session() as session:
        proposal_id = lifecycle.get_proposal(session, view.proposal_code).id
    data = load_scoped(coord.settings.root, coord.settings.db_url, view)
    minimum = settings.min_cell_size
    try:
        if body.mode == "federated":
            result, frame = run_federated_query(
                coord, request, data, view.columns, minimum, view.strata
            )
        else:
            result, frame = run_query(
                request, data, data.dx_labels, view.columns, minimum, view.strata
            )
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
