"""Data releases: create (steering), list, show."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from consortium import audit
from consortium.api.deps import get_coordinator, require_roles
from consortium.api.schemas import ERROR_RESPONSES, ReleaseCreate, ReleaseOut
from consortium.auth import Identity
from consortium.coordinator import Coordinator
from consortium.releases import create_release, get_release, list_releases

router = APIRouter(prefix="/releases", tags=["releases"], responses=ERROR_RESPONSES)
committee = require_roles("admin", "steering")


@router.post("", response_model=ReleaseOut, status_code=201, summary="Freeze a release (steering)")
def post_release(
    body: ReleaseCreate,
    identity: Identity = Depends(committee),
    coord: Coordinator = Depends(get_coordinator),
) -> ReleaseOut:
    with coord.db.session() as session:
        release = create_release(
            session, body.name, identity.actor, body.sites, body.exclude_subjects
        )
        return ReleaseOut.model_validate(release)


@router.get("", response_model=list[ReleaseOut], summary="List releases")
def get_releases(
    identity: Identity = Depends(committee), coord: Coordinator = Depends(get_coordinator)
) -> list[ReleaseOut]:
    with coord.db.session() as session:
        out = [ReleaseOut.model_validate(r) for r in list_releases(session)]
        audit.append(session, identity.actor, "release.list", "releases", {})
        return out


@router.get("/{name}", response_model=ReleaseOut, summary="One release")
def get_one_release(
    name: str,
    identity: Identity = Depends(committee),
    coord: Coordinator = Depends(get_coordinator),
) -> ReleaseOut:
    with coord.db.session() as session:
        out = ReleaseOut.model_validate(get_release(session, name))
        audit.append(session, identity.actor, "release.read", f"release:{name}", {})
        return out
