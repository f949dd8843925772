"""Hash-chained, append-only audit log.

Each entry stores the hash of the previous entry and its own hash over
``(seq, ts, actor, action, target, details, prev_hash)``. Changing, deleting or
reordering any entry breaks the chain, which :func:`verify_chain` reports. The
chain head row is updated before an entry is appended, which serialises
concurrent appenders on SQLite and PostgreSQL alike.

References
----------
Schneier B, Kelsey J (1999). Secure audit logs to support computer forensics.
ACM Trans Inf Syst Secur 2(2):159-176.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from consortium.db.base import utcnow
from consortium.db.models import AuditEntry, AuditHead

GENESIS = "0" * 64
HEAD_INFO = "confed_audit_head"  # Session.info: (seq, hash) of the last entry appended


def entry_hash(
    seq: int, ts: datetime, actor: str, action: str, target: str, details: dict, prev_hash: str
) -> str:
    payload = {
        "seq": seq,
        "ts": ts.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": actor,
        "action": action,
        "target": target,
        "details": details,
        "prev_hash": prev_hash,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def append(
    session: Session, actor: str, action: str, target: str, details: dict[str, Any] | None = None
) -> AuditEntry:
    """Append one entry in the caller's transaction (it commits with the change it records)."""
    session.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=AuditHead.seq + 1))
    head = session.execute(
        select(AuditHead).where(AuditHead.id == 1).execution_options(populate_existing=True)
    ).scalar_one()
    details = json.loads(json.dumps(details or {}, sort_keys=True, default=str))
    ts = utcnow()
    h = entry_hash(head.seq, ts, actor, action, target, details, head.entry_hash)
    entry = AuditEntry(
        seq=head.seq,
        ts=ts,
        actor=actor,
        action=action,
        target=target,
        details=details,
        prev_hash=head.entry_hash,
        entry_hash=h,
    )
    head.entry_hash = h
    session.add(entry)
    session.flush()
    session.info[HEAD_INFO] = (entry.seq, h)  # checkpointed after commit (consortium.receipts)
    return entry


@dataclass
class ChainReport:
    n_entries: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_chain(session: Session) -> ChainReport:
    """Recompute every hash and link; report each break with its sequence number."""
    prev = GENESIS
    expected_seq = 1
    report = ChainReport(0)
    rows = session.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars()
    for e in rows:
        report.n_entries += 1
        if e.seq != expected_seq:
            report.problems.append(
                f"entry {e.seq}: expected sequence number {expected_seq} (entry missing)"
            )
        if e.prev_hash != prev:
            report.problems.append(
                f"entry {e.seq}: previous-hash link broken (entry deleted or reordered)"
            )
        recomputed = entry_hash(e.seq, e.ts, e.actor, e.action, e.target, e.details, e.prev_hash)
        if recomputed != e.entry_hash:
            report.problems.append(f"entry {e.seq}: content does not match its hash (modified)")
        prev = e.entry_hash
        expected_seq = e.seq + 1
    head = session.get(AuditHead, 1)
    if head is None:
        report.problems.append("audit chain head row missing")
    elif head.seq != expected_seq - 1 or head.entry_hash != prev:
        report.problems.append(
            f"chain head says {head.seq} entries ending in {head.entry_hash[:12]}, log has "
            f"{expected_seq - 1} ending in {prev[:12]} (entries truncated from the end)"
        )
    return report
