"""The audit log: read entries, verify the chain (admin); its public key and entry hashes (all)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select

from consortium import audit
from consortium.api.deps import get_coordinator, get_identity, require_roles
from consortium.api.schemas import (
    ERROR_RESPONSES,
    AuditEntryOut,
    AuditHashOut,
    AuditKeyOut,
    AuditVerifyOut,
    IdPath,
    SeqQuery,
)
from consortium.auth import Identity
from consortium.coordinator import Coordinator
from consortium.db.models import AuditEntry
from consortium.errors import ConfedError
from consortium.receipts import verify_checkpoints

router = APIRouter(prefix="/audit", tags=["audit"], responses=ERROR_RESPONSES)
admin = require_roles("admin")


@router.get("", response_model=list[AuditEntryOut], summary="Audit entries after a sequence number")
def get_entries(
    after: SeqQuery = 0,
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


@router.get(
    "/verify",
    response_model=AuditVerifyOut,
    summary="Verify the hash chain and the signed checkpoints outside the database",
)
def verify(
    identity: Identity = Depends(admin), coord: Coordinator = Depends(get_coordinator)
) -> AuditVerifyOut:
    with coord.db.session() as session:
        report = audit.verify_chain(session)
        anchored = verify_checkpoints(
            session, coord.settings.checkpoint_path, coord.notary.public_pem
        )
        ok = report.ok and anchored.ok
        audit.append(session, identity.actor, "audit.verify", "audit", {"ok": ok})
        return AuditVerifyOut(
            ok=ok,
            n_entries=report.n_entries,
            problems=report.problems + anchored.problems,
            n_checkpoints=anchored.n_checkpoints,
        )


@router.get("/key", response_model=AuditKeyOut, summary="The coordinator's audit signing key")
def get_key(
    identity: Identity = Depends(get_identity), coord: Coordinator = Depends(get_coordinator)
) -> AuditKeyOut:
    return AuditKeyOut(
        public_key_pem=coord.notary.public_pem.decode(), fingerprint=coord.notary.fingerprint
    )


@router.get(
    "/entries/{seq}/hash",
    response_model=AuditHashOut,
    summary="The current hash of one audit entry (to check a receipt; no entry contents)",
)
def get_entry_hash(
    seq: IdPath,
    identity: Identity = Depends(get_identity),
    coord: Coordinator = Depends(get_coordinator),
) -> AuditHashOut:
    with coord.db.session() as session:
        entry_hash = session.execute(
            select(AuditEntry.entry_hash).where(AuditEntry.seq == seq)
        ).scalar_one_or_none()
        if entry_hash is None:
            raise ConfedError("not_found", f"audit entry {seq} not found", 404)
        audit.append(session, identity.actor, "audit.hash.read", f"audit:{seq}", {})
        return AuditHashOut(seq=seq, entry_hash=entry_hash)
