"""The public register of proposals: id, title, institution, status and dates only."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy import select

from consortium.api.deps import get_coordinator
from consortium.api.schemas import ERROR_RESPONSES
from consortium.coordinator import Coordinator
from consortium.proposals.models import Proposal
from consortium.proposals.schemas import RegisterEntry

router = APIRouter(prefix="/register", tags=["register"], responses=ERROR_RESPONSES)


def register_entries(session) -> list[RegisterEntry]:
    rows = session.execute(
        select(Proposal)
        .where(Proposal.status != "draft")
        .order_by(Proposal.created_at, Proposal.id)
    ).scalars()
    return [
        RegisterEntry(
            code=p.code,
            title=p.title,
            institution=p.institution,
            status=p.status,
            created_at=p.created_at,
            submitted_at=p.submitted_at,
            decided_at=p.decided_at,
            activated_at=p.activated_at,
            ended_at=p.ended_at,
        )
        for p in rows
    ]


@router.get("", response_model=list[RegisterEntry], summary="Public register (no token needed)")
def get_register(coord: Coordinator = Depends(get_coordinator)) -> list[RegisterEntry]:
    with coord.db.session() as session:
        return register_entries(session)
