"""Member sites: register, list, show, status of their uploads."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select

from consortium import audit
from consortium.api.deps import check_site_access, get_coordinator, get_identity, require_roles
from consortium.api.schemas import (
    ERROR_RESPONSES,
    SiteCreate,
    SiteCreated,
    SiteOut,
    SiteStatus,
    SubmissionOut,
    UploadOut,
)
from consortium.auth import Identity
from consortium.coordinator import Coordinator
from consortium.db.models import Submission, Upload
from consortium.registry import add_site, get_site, list_sites

router = APIRouter(prefix="/sites", tags=["sites"], responses=ERROR_RESPONSES)


@router.post("", response_model=SiteCreated, status_code=201, summary="Register a site (admin)")
def create_site(
    body: SiteCreate,
    identity: Identity = Depends(require_roles("admin")),
    coord: Coordinator = Depends(get_coordinator),
) -> SiteCreated:
    with coord.db.session() as session:
        site, _token, plaintext = add_site(
            session,
            body.id,
            body.name,
            body.public_key_pem,
            identity.actor,
            coord.settings.token_days,
        )
        return SiteCreated(site=SiteOut.model_validate(site), token=plaintext)


@router.get("", response_model=list[SiteOut], summary="List sites (admin, steering)")
def get_sites(
    identity: Identity = Depends(require_roles("admin", "steering")),
    coord: Coordinator = Depends(get_coordinator),
) -> list[SiteOut]:
    with coord.db.session() as session:
        out = [SiteOut.model_validate(s) for s in list_sites(session)]
        audit.append(session, identity.actor, "site.list", "sites", {})
        return out


@router.get("/{site_id}", response_model=SiteOut, summary="One site")
def get_one_site(
    site_id: str,
    identity: Identity = Depends(get_identity),
    coord: Coordinator = Depends(get_coordinator),
) -> SiteOut:
    check_site_access(identity, site_id)
    with coord.db.session() as session:
        out = SiteOut.model_validate(get_site(session, site_id))
        audit.append(session, identity.actor, "site.read", f"site:{site_id}", {})
        return out


@router.get(
    "/{site_id}/status",
    response_model=SiteStatus,
    summary="What the coordinator accepted or rejected from a site, and why",
)
def site_status(
    site_id: str,
    limit: int = Query(20, ge=1, le=500, description="number of recent uploads to list"),
    identity: Identity = Depends(get_identity),
    coord: Coordinator = Depends(get_coordinator),
) -> SiteStatus:
    check_site_access(identity, site_id)
    with coord.db.session() as session:
        site = get_site(session, site_id)
        subs = (
            session.execute(
                select(Submission)
                .where(Submission.site_id == site_id)
                .order_by(Submission.received_at.desc(), Submission.id.desc())
            )
            .scalars()
            .all()
        )
        uploads = (
            session.execute(
                select(Upload)
                .where(Upload.site_id == site_id)
                .order_by(Upload.received_at.desc(), Upload.id.desc())
                .limit(limit)
            )
            .scalars()
            .all()
        )
        current = next((s for s in subs if s.superseded_by_id is None), None)
        out = SiteStatus(
            site=SiteOut.model_validate(site),
            current=SubmissionOut.model_validate(current) if current else None,
            submissions=[SubmissionOut.model_validate(s) for s in subs],
            uploads=[UploadOut.model_validate(u) for u in uploads],
        )
        audit.append(session, identity.actor, "site.status", f"site:{site_id}", {})
        return out
