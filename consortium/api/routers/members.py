"""Named members: researcher and steering-committee accounts with their tokens."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from consortium import audit
from consortium.api.deps import get_coordinator, require_roles
from consortium.api.schemas import ERROR_RESPONSES, IdPath
from consortium.auth import Identity
from consortium.coordinator import Coordinator
from consortium.proposals.members import (
    create_member,
    get_member,
    issue_member_token,
    list_members,
)
from consortium.proposals.schemas import MemberCreate, MemberCreated, MemberOut

router = APIRouter(prefix="/members", tags=["members"], responses=ERROR_RESPONSES)


@router.post("", response_model=MemberCreated, status_code=201, summary="Add a member (admin)")
def post_member(
    body: MemberCreate,
    identity: Identity = Depends(require_roles("admin")),
    coord: Coordinator = Depends(get_coordinator),
) -> MemberCreated:
    with coord.db.session() as session:
        member, token = create_member(
            session, body.name, body.institution, body.email, body.role, identity.actor, body.days
        )
        return MemberCreated(member=MemberOut.model_validate(member), token=token)


@router.get("", response_model=list[MemberOut], summary="List members (admin, steering)")
def get_members(
    identity: Identity = Depends(require_roles("admin", "steering")),
    coord: Coordinator = Depends(get_coordinator),
) -> list[MemberOut]:
    with coord.db.session() as session:
        out = [MemberOut.model_validate(m) for m in list_members(session)]
        audit.append(session, identity.actor, "member.list", "members", {})
        return out


@router.post(
    "/{member_id}/tokens",
    response_model=MemberCreated,
    status_code=201,
    summary="Issue another token to a member (admin)",
)
def post_member_token(
    member_id: IdPath,
    identity: Identity = Depends(require_roles("admin")),
    coord: Coordinator = Depends(get_coordinator),
) -> MemberCreated:
    with coord.db.session() as session:
        member = get_member(session, member_id)
        token = issue_member_token(session, member, identity.actor, coord.settings.token_days)
        return MemberCreated(member=MemberOut.model_validate(member), token=token)
