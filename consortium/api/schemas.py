"""Pydantic schemas of every request and response body."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. `signature_invalid`")
    message: str = Field(description="what failed, naming the file, field, subject or site")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    database: str = Field(description="database backend: sqlite or postgresql")


class IdentityOut(BaseModel):
    token_id: int
    role: str
    site_id: str | None


class TokenCreate(BaseModel):
    role: Literal["admin", "steering", "site", "researcher"]
    site_id: str | None = None
    label: str = ""
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
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
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
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    sites: list[str] | None = Field(None, description="default: every site with a submission")
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


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in {
        401: "missing, unknown, expired or revoked token",
        403: "the token's role or site may not do this",
        404: "no such resource",
        422: "invalid request or failed check",
    }.items()
}
