"""Pydantic schemas of every request and response body."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from sites.contract import check_name
from sites.receipts import Receipt

#: Largest integer id a path or query accepts (a signed 64-bit integer, as in the database).
MAX_ID = 2**63 - 1
#: An integer id in a path: 422 outside 1..MAX_ID, never a database overflow.
IdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="integer id")]
#: A sequence number in a query (``?after=``).
SeqQuery = Annotated[int, Query(ge=0, le=MAX_ID, description="sequence number")]
#: Longest token label (the database column).
LABEL_MAX = 256


def contract_name(what: str) -> AfterValidator:
    """Validate a name with the site-coordinator contract's rule (:func:`check_name`)."""
    return AfterValidator(lambda value: check_name(value, what))


SiteId = Annotated[str, contract_name("site id")]
ReleaseName = Annotated[str, contract_name("release name")]


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. `signature_invalid`")
    message: str = Field(description="what failed, naming the file, field, subject or site")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class UploadRejected(ErrorResponse):
    receipt: Receipt | None = Field(
        None, description="signed receipt of the audit entry recording the refusal"
    )


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    database: str = Field(description="database backend: sqlite or postgresql")
    disk: Literal["ok", "low"] = Field(
        "ok", description="'low' when the data root has less free space than configured"
    )
    disk_free_bytes: int = Field(0, description="free bytes of the data root's file system")


class IdentityOut(BaseModel):
    token_id: int
    role: str
    site_id: str | None


class TokenCreate(BaseModel):
    role: Literal["admin", "steering", "site", "researcher"]
    site_id: SiteId | None = None
    label: str = Field("", max_length=LABEL_MAX)
    days: int = Field(365, gt=0, le=3650, description="lifetime in days")


class TokenOut(_Out):
    id: int
    role: str
    site_id: str | None
    label: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None


class TokenIssued(BaseModel):
    token: str = Field(description="the secret; shown once, never stored by the coordinator")
    info: TokenOut


class SiteCreate(BaseModel):
    id: SiteId
    name: str = Field(min_length=1, max_length=256)
    public_key_pem: str = Field(description="the site's Ed25519 public key, PEM")


class SiteOut(_Out):
    id: str
    name: str
    public_key_pem: str
    created_at: datetime


class SiteCreated(BaseModel):
    site: SiteOut
    token: str = Field(description="the site's API token; shown once")


class SubmissionOut(_Out):
    id: int
    site_id: str
    bundle_hash: str
    format_version: str
    n_subjects: int
    group_counts: dict[str, int]
    flags: list[str]
    received_at: datetime
    received_by: str
    superseded_by_id: int | None


class SubmissionFileOut(_Out):
    path: str
    sha256: str
    size: int


class SubmissionDetail(SubmissionOut):
    files: list[SubmissionFileOut]


class UploadResult(BaseModel):
    created: bool = Field(description="false when the same bundle had been accepted before")
    submission: SubmissionOut
    receipt: Receipt | None = Field(
        None, description="signed receipt of the audit entry recording this upload; keep it"
    )


class UploadOut(_Out):
    id: int
    site_id: str
    received_at: datetime
    size: int
    outcome: Literal["accepted", "duplicate", "rejected"]
    error_code: str | None
    message: str
    bundle_hash: str | None
    submission_id: int | None


class SiteStatus(BaseModel):
    site: SiteOut
    current: SubmissionOut | None = Field(description="the submission future releases will use")
    submissions: list[SubmissionOut]
    uploads: list[UploadOut] = Field(description="the most recent upload attempts, newest first")


class ReleaseCreate(BaseModel):
    name: ReleaseName
    sites: list[SiteId] | None = Field(None, description="default: every site with a submission")
    exclude_subjects: list[str] = Field(default_factory=list, description="subject keys to drop")


class ReleaseMember(_Out):
    site_id: str
    submission_id: int
    bundle_hash: str


class ReleaseOut(_Out):
    name: str
    release_hash: str
    created_at: datetime
    created_by: str
    excluded_subjects: list[str]
    members: list[ReleaseMember]


class AuditEntryOut(_Out):
    seq: int
    ts: datetime
    actor: str
    action: str
    target: str
    details: dict[str, Any]
    prev_hash: str
    entry_hash: str


class AuditVerifyOut(BaseModel):
    ok: bool
    n_entries: int
    problems: list[str]
    n_checkpoints: int = Field(0, description="signed checkpoints the database was checked against")


class AuditKeyOut(BaseModel):
    algorithm: Literal["Ed25519"] = "Ed25519"
    public_key_pem: str = Field(description="the coordinator's audit signing key (public part)")
    fingerprint: str = Field(description="SHA-256 (hex) of the raw 32-byte public key")


class AuditHashOut(BaseModel):
    seq: int
    entry_hash: str = Field(description="the entry's hash as the database holds it now")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in {
        401: "missing, unknown, expired or revoked token",
        403: "the token's role or site may not do this",
        404: "no such resource",
        422: "invalid request or failed check",
    }.items()
}
