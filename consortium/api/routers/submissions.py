"""Submissions: upload a signed bundle (sites), list and read them."""

from __future__ import annotations

import shutil

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from consortium import audit
from consortium.api.deps import check_site_access, get_coordinator, require_roles
from consortium.api.schemas import (
    ERROR_RESPONSES,
    ErrorDetail,
    IdPath,
    SubmissionDetail,
    SubmissionOut,
    UploadRejected,
    UploadResult,
)
from consortium.auth import Identity
from consortium.coordinator import Coordinator
from consortium.db.models import Submission, SubmissionFile
from consortium.errors import ConfedError
from consortium.ingest import (
    IngestResult,
    ingest_unpacked,
    receive_and_unpack,
    record_refusal,
)
from consortium.receipts import capture

router = APIRouter(prefix="/submissions", tags=["submissions"], responses=ERROR_RESPONSES)
# roles that may read submissions at all: checked before any lookup, so that the
# answer to other roles never depends on whether a submission exists
readers = require_roles("admin", "steering", "site")

REJECTED = {"model": UploadRejected}  # refusals carry a receipt of their audit entry
UPLOAD_RESPONSES = {
    200: {"model": UploadResult, "description": "the same bundle was accepted before"},
    400: ERROR_RESPONSES[422]
    | REJECTED
    | {"description": "corrupted, truncated or unsafe archive"},
    403: ERROR_RESPONSES[403]
    | REJECTED
    | {"description": "bundle of another site, or signature not by the site's registered key"},
    413: ERROR_RESPONSES[422]
    | REJECTED
    | {"description": "upload larger than the configured limit"},
    415: ERROR_RESPONSES[422]
    | REJECTED
    | {"description": "compressed archive: bundles are sent as an uncompressed tar"},
    422: ERROR_RESPONSES[422] | REJECTED,
    507: ERROR_RESPONSES[422]
    | REJECTED
    | {"description": "no space left on the coordinator's disk; retry later"},
}


@router.post(
    "",
    response_model=UploadResult,
    status_code=201,
    summary="Upload a bundle archive (site)",
    description=(
        "The request body is the bundle as an uncompressed tar (`Content-Type: "
        "application/x-tar`), streamed to disk with a size limit. Idempotent: uploading "
        "the same bundle again returns the existing submission with status 200."
    ),
    responses=UPLOAD_RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def upload(
    request: Request,
    response: Response,
    identity: Identity = Depends(require_roles("site")),
    coord: Coordinator = Depends(get_coordinator),
) -> UploadResult:
    with capture() as heads:  # (seq, hash) of the audit entries committed for this upload
        try:
            result = await _receive_and_ingest(request, identity, coord)
        except ConfedError as err:
            if not heads:
                raise
            rejected = UploadRejected(
                error=ErrorDetail(code=err.code, message=err.message),
                receipt=coord.receipt(*heads[-1]),
            )
            return JSONResponse(rejected.model_dump(mode="json"), err.status)
    response.status_code = 201 if result.created else 200
    return UploadResult(
        created=result.created,
        submission=SubmissionOut.model_validate(result.submission),
        receipt=coord.receipt(*heads[-1]) if heads else None,
    )


async def _receive_and_ingest(
    request: Request, identity: Identity, coord: Coordinator
) -> IngestResult:
    """Unpack the body while it streams in, then ingest it (refusals are recorded and raised)."""
    limit = coord.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    workdir = coord.store.temp_path("ingest")
    workdir.mkdir()
    try:
        try:
            bundle_dir, size = await receive_and_unpack(
                request.stream(), workdir, limit, int(declared) if declared else None, "upload"
            )
        except ConfedError as err:
            shutil.rmtree(workdir, ignore_errors=True)  # before recording: the disk may be full
            await run_in_threadpool(
                record_refusal, coord, identity.site_id, identity.actor, int(declared or 0), err
            )
            raise
        return await run_in_threadpool(
            ingest_unpacked,
            coord,
            bundle_dir,
            workdir,
            identity.site_id,
            identity.actor,
            "upload",
            size,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _visible(identity: Identity, site_id: str | None):
    query = select(Submission).order_by(Submission.received_at, Submission.id)
    if identity.role == "site":
        if site_id not in (None, identity.site_id):
            check_site_access(identity, site_id)
        site_id = identity.site_id
    elif identity.role not in ("admin", "steering"):
        raise ConfedError("forbidden", f"role {identity.role!r} may not list submissions", 403)
    if site_id is not None:
        query = query.where(Submission.site_id == site_id)
    return query


@router.get("", response_model=list[SubmissionOut], summary="List submissions")
def list_submissions(
    site_id: str | None = Query(None, description="only this site's"),
    current: bool = Query(False, description="only submissions not superseded"),
    identity: Identity = Depends(readers),
    coord: Coordinator = Depends(get_coordinator),
) -> list[SubmissionOut]:
    query = _visible(identity, site_id)
    if current:
        query = query.where(Submission.superseded_by_id.is_(None))
    with coord.db.session() as session:
        out = [SubmissionOut.model_validate(s) for s in session.execute(query).scalars()]
        audit.append(session, identity.actor, "submission.list", "submissions", {"site": site_id})
        return out


def _load(session, identity: Identity, submission_id: int) -> Submission:
    sub = session.execute(
        select(Submission)
        .options(selectinload(Submission.files))
        .where(Submission.id == submission_id)
    ).scalar_one_or_none()
    # another site's submission gets the very answer of one that does not exist
    if sub is None or (identity.role == "site" and sub.site_id != identity.site_id):
        raise ConfedError("not_found", f"submission {submission_id} not found", 404)
    check_site_access(identity, sub.site_id)
    return sub


@router.get("/{submission_id}", response_model=SubmissionDetail, summary="One submission")
def get_submission(
    submission_id: IdPath,
    identity: Identity = Depends(readers),
    coord: Coordinator = Depends(get_coordinator),
) -> SubmissionDetail:
    with coord.db.session() as session:
        out = SubmissionDetail.model_validate(_load(session, identity, submission_id))
        audit.append(session, identity.actor, "submission.read", f"submission:{submission_id}", {})
        return out


@router.get(
    "/{submission_id}/files/{path:path}",
    summary="Download one file of a submission (streamed from the object store)",
    response_class=FileResponse,
)
def get_file(
    submission_id: IdPath,
    path: str,
    identity: Identity = Depends(readers),
    coord: Coordinator = Depends(get_coordinator),
) -> FileResponse:
    with coord.db.session() as session:
        sub = _load(session, identity, submission_id)
        row = session.execute(
            select(SubmissionFile).where(
                SubmissionFile.submission_id == sub.id, SubmissionFile.path == path
            )
        ).scalar_one_or_none()
        if row is None:
            raise ConfedError(
                "not_found", f"file {path} of submission {submission_id} not found", 404
            )
        audit.append(
            session,
            identity.actor,
            "submission.file.read",
            f"submission:{submission_id}/{path}",
            {"sha256": row.sha256},
        )
        sha = row.sha256
    return FileResponse(
        coord.store.path(sha),
        media_type="application/octet-stream",
        headers={"X-Content-SHA256": sha},
        filename=path.rsplit("/", 1)[-1],
    )
