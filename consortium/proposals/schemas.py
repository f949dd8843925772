"""Pydantic schemas of the proposal, member, grant and register routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from consortium.api.schemas import ReleaseName
from sites.receipts import Receipt

Text = Field(min_length=1, max_length=20_000)


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class MemberCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=256)
    institution: str = Field(min_length=1, max_length=256)
    email: str = Field(pattern=r"^[^@\s]{1,128}@[^@\s]{1,127}$")
    role: Literal["researcher", "steering"]
    days: int = Field(365, gt=0, le=3650)


class MemberOut(_Out):
    id: int
    name: str
    institution: str
    email: str
    role: str
    created_at: datetime


class MemberCreated(BaseModel):
    member: MemberOut
    token: str = Field(description="shown once, never stored")


class ProposalFields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(min_length=3, max_length=300)
    abstract: str = Text
    aims: str = Text
    analysis_plan: str = Text
    measures: list[str] = Field(max_length=50)
    columns: list[str] = Field(max_length=100)
    sites: list[str] = Field(default_factory=list, max_length=500, description="empty: all")
    release_name: ReleaseName
    duration_months: int = Field(ge=1, le=60)


class ProposalUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str | None = Field(None, min_length=3, max_length=300)
    abstract: str | None = Field(None, min_length=1, max_length=20_000)
    aims: str | None = Field(None, min_length=1, max_length=20_000)
    analysis_plan: str | None = Field(None, min_length=1, max_length=20_000)
    measures: list[str] | None = Field(None, max_length=50)
    columns: list[str] | None = Field(None, max_length=100)
    sites: list[str] | None = Field(None, max_length=500)
    release_name: ReleaseName | None = None
    duration_months: int | None = Field(None, ge=1, le=60)


class ProposalOut(_Out):
    id: int
    code: str
    title: str
    abstract: str
    aims: str
    analysis_plan: str
    investigator_id: int
    institution: str
    measures: list[str]
    columns: list[str]
    sites: list[str]
    release_name: str
    duration_months: int
    dua_version: str | None
    dua_accepted_by: str | None
    dua_accepted_at: datetime | None
    status: str
    review_round: int
    created_at: datetime
    submitted_at: datetime | None
    decided_at: datetime | None
    consent_deadline: datetime | None
    activated_at: datetime | None
    ended_at: datetime | None
    consents: dict[str, str] = Field(default_factory=dict)


class RegisterEntry(BaseModel):
    """Public fields only."""

    code: str
    title: str
    institution: str
    status: str
    created_at: datetime
    submitted_at: datetime | None
    decided_at: datetime | None
    activated_at: datetime | None
    ended_at: datetime | None


class DuaAccept(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=1, max_length=32)


class DuaText(BaseModel):
    version: str
    text: str


class VoteCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["approve", "reject", "revise"]
    comment: str = Field("", max_length=10_000)


class VoteOut(_Out):
    id: int
    review_round: int
    member_id: int
    decision: str
    comment: str
    cast_at: datetime


class ConsentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["consent", "opt_out"]
    comment: str = Field("", max_length=10_000)


class ActivationRequest(BaseModel):
    """Optional body of ``POST /proposals/{code}/activate``."""

    model_config = ConfigDict(extra="forbid")
    strata: dict[str, list[float] | list[str]] | None = Field(
        None,
        max_length=5,
        description=(
            "what the researcher may filter on: column -> band edges (numbers, increasing) "
            "or levels (strings); site and dx are always cell dimensions. Default: the "
            "settings' age_bands for age."
        ),
        examples=[{"age": [18, 30, 45, 65, 100], "sex": ["M", "F"]}],
    )


class ConsentOut(_Out):
    proposal_id: int
    site_id: str
    decision: str
    comment: str
    decided_at: datetime


class GrantOut(_Out):
    id: int
    proposal_id: int
    member_id: int
    measures: list[str]
    columns: list[str]
    sites: list[str]
    effective_sites: list[str] = Field(default_factory=list)
    release_name: str
    release_hash: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    strata: dict[str, list] | None = Field(
        None, description="what remote analyses may filter on (None: the default age bands)"
    )


class ExportOut(BaseModel):
    id: int
    proposal: str
    archive_sha256: str
    manifest: dict[str, Any]
    receipt: Receipt | None = Field(
        None, description="signed receipt of the audit entry recording this export"
    )


class QueryFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    column: str = Field(min_length=1, max_length=128)
    op: Literal["eq", "ne", "in", "ge", "le"]
    value: str | float | list[str] | list[float]

    @model_validator(mode="after")
    def _value_fits_op(self) -> QueryFilter:
        what = f"filter on {self.column!r}: {self.op}"
        if self.op in ("ge", "le") and not isinstance(self.value, int | float):
            raise ValueError(f"{what} needs a number, got {self.value!r}")
        if self.op == "in" and not isinstance(self.value, list):
            raise ValueError(f"{what} needs a list of values, got {self.value!r}")
        if self.op in ("eq", "ne") and isinstance(self.value, list):
            raise ValueError(f"{what} needs one value, got a list")
        return self


class AnalysisRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    analysis: Literal["mixed_model", "meta_analysis"]
    measure: str = Field(min_length=1, max_length=128)
    outcome: str = Field(min_length=1, max_length=128)
    covariates: list[str] = Field(default_factory=list, max_length=10)
    filters: list[QueryFilter] = Field(default_factory=list, max_length=10)
    mode: Literal["pooled", "federated"] = Field(
        "pooled",
        description=(
            "pooled: computed on the grant's release at the coordinator; federated: each "
            "site's agent applies the filters and the minimum cell size to its own subjects "
            "and sends only its cross-products or OLS summary"
        ),
    )
    harmonize: str = Field(
        "none",
        max_length=64,
        description=(
            "harmonizer applied to the measure across the analysed sites before the model, "
            "preserving diagnosis and the covariates: any registered name (none, combat, "
            "combat-gam, ...); combat-gam smooths age, so list age among the covariates"
        ),
    )

    @field_validator("harmonize")
    @classmethod
    def _registered(cls, harmonize: str) -> str:
        from harmonization.registry import harmonizer_names

        if harmonize not in harmonizer_names():
            raise ValueError(
                f"unknown harmonizer {harmonize!r}; choose one of: {', '.join(harmonizer_names())}"
            )
        return harmonize

    @field_validator("covariates")
    @classmethod
    def _distinct(cls, covariates: list[str]) -> list[str]:
        twice = sorted({c for c in covariates if covariates.count(c) > 1})
        if twice:
            raise ValueError(f"covariate(s) listed more than once: {', '.join(twice)}")
        return covariates


class AnalysisResult(BaseModel):
    query_id: int
    result: dict[str, Any]
    receipt: Receipt | None = Field(
        None, description="signed receipt of the audit entry recording this release"
    )
