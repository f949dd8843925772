"""The audit log: read entries, verify the hash chain (admin)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select

from consortium import audit
from consortium.api.deps import get_coordinator, require_roles
from consortium.api.schemas import ERROR_RESPONSES, AuditEntryOut, AuditVerifyOut
from consortium.auth import Identity
from consortium.coordinator import Coordinator
from consortium.db.models import AuditEntry

router = APIRouter(prefix="/audit", tags=["audit"], responses=ERROR_RESPONSES)
admin = require_roles("admin")


@router.get("", response_model=list[AuditEntryOut], summary="Audit entries after a sequence number")
def get_entries(
    after: int = Query(0, ge=0),
    limit: int = Query(100, ge=1, le=1000),
    identity: Identity = Depends(admin),
    coord: Coordinator = Depends(get_coordinator),
) -> list[AuditEntryOut]:
    with coord.db.session() as session:
        rows = session.execute(
            select(AuditEntry).where(AuditEntry.seq > after).order_by(AuditEntry.seq).limit(limit)
        ).scalars()
        out = [AuditEntryOut.model_validate(e) for e in rows]
        audit.append(session, identity.actor, "audit.read", "audit", {"after": after})
        return out


@router.get("/verify", response_model=AuditVerifyOut, summary="Verify the hash chain")
def verify(
    identity: Identity = Depends(admin), coord: Coordinator = Depends(get_coordinator)
) -> AuditVerifyOut:
    with coord.db.session() as session:
        report = audit.verify_chain(session)
        audit.append(session, identity.actor, "audit.verify", "audit", {"ok": report.ok})
        return AuditVerifyOut(ok=report.ok, n_entries=report.n_entries, problems=report.problems)
