"""Anchor the audit chain outside the database: signed checkpoints and receipts.

The hash chain of :mod:`consortium.audit` detects edits only by someone who does
not also recompute the hashes. Whoever can write the database can rewrite the
whole chain, so the coordinator signs the chain head with its own Ed25519 key
(``<root>/keys/coordinator_ed25519.pem``, mode 0600) and keeps the signatures
where the database is not:

- **Checkpoints**: after every committed transaction that appended audit
  entries, one signed ``(seq, entry_hash, ts)`` line is appended (``O_APPEND``,
  fsync) to the checkpoint file (``<root>/audit-checkpoints.jsonl`` unless the
  settings name another path, e.g. on a WORM or remote mount). It is written
  only after the commit, so it never names an entry that was rolled back.
- **Receipts**: the same signed statement about the entry that records an
  action is returned to the site that uploaded (accepted, duplicate or
  rejected) and to the researcher who exported, downloaded or received a
  remote analysis result. Each party can later ask for the hash at that
  ``seq`` and see whether the log was rewritten.

:func:`verify_checkpoints` checks the database against the checkpoint file.
The receipt schema and its verification live in :mod:`sites.receipts` (sites
may not import this package).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from consortium.audit import HEAD_INFO
from consortium.db.models import AuditEntry, AuditHead
from sites.keys import fingerprint, generate_keypair, load_private_key, public_pem
from sites.receipts import Receipt, parse_receipt, receipt_payload, verify_receipt

__all__ = [
    "Notary",
    "Receipt",
    "VerifyReport",
    "capture",
    "verify_checkpoints",
    "verify_receipt",
]

log = logging.getLogger("confed.coordinator")

KEY_FILE = "keys/coordinator_ed25519.pem"
PUBLIC_KEY_FILE = "keys/coordinator_ed25519.pub.pem"

_captured: ContextVar[list[tuple[int, str]] | None] = ContextVar("confed_receipts", default=None)


@contextmanager
def capture() -> Iterator[list[tuple[int, str]]]:
    """Collect ``(seq, entry_hash)`` of every audit-appending commit made inside the block.

    Works across ``run_in_threadpool``: the worker thread's context shares the list.
    """
    sink: list[tuple[int, str]] = []
    token = _captured.set(sink)
    try:
        yield sink
    finally:
        _captured.reset(token)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class Notary:
    """The coordinator's signing key and its checkpoint file.

    Parameters
    ----------
    key : Ed25519PrivateKey
        The coordinator's audit signing key.
    checkpoint_path : Path
        Append-only file of signed checkpoints (one JSON object per line).
    """

    def __init__(self, key: Ed25519PrivateKey, checkpoint_path: Path):
        self.key = key
        self.public_pem = public_pem(key.public_key())
        self.fingerprint = fingerprint(key.public_key())
        self.checkpoint_path = Path(checkpoint_path)
        self._lock = threading.Lock()

    @classmethod
    def open(cls, root: Path, checkpoint_path: Path) -> tuple[Notary, bool]:
        """Load ``<root>/keys/coordinator_ed25519.pem``, creating it (0600) if missing.

        Returns
        -------
        tuple of (Notary, bool)
            The notary and whether the key was created now.
        """
        private = Path(root) / KEY_FILE
        created = not private.exists()
        if created:
            generate_keypair(private, Path(root) / PUBLIC_KEY_FILE)
            os.chmod(private.parent, 0o700)
        notary = cls(load_private_key(private), checkpoint_path)
        return notary, created

    def sign(self, seq: int, entry_hash: str) -> Receipt:
        """A signed statement that audit entry ``seq`` has hash ``entry_hash``."""
        ts = _now()
        payload = receipt_payload(seq, entry_hash, ts, self.fingerprint)
        signature = base64.b64encode(self.key.sign(payload)).decode()
        return Receipt(
            seq=seq,
            entry_hash=entry_hash,
            ts=ts,
            key_fingerprint=self.fingerprint,
            signature=signature,
        )

    def checkpoint(self, seq: int, entry_hash: str) -> Receipt:
        """Sign the head and append it to the checkpoint file (one write, then fsync)."""
        receipt = self.sign(seq, entry_hash)
        line = (receipt.model_dump_json() + "\n").encode()
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.checkpoint_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        return receipt

    def checkpoint_head(self, session: Session) -> Receipt | None:
        """Checkpoint the database's current chain head (None if the log is empty)."""
        head = session.get(AuditHead, 1)
        if head is None or head.seq == 0:
            return None
        return self.checkpoint(head.seq, head.entry_hash)

    def after_commit(self, session: Session) -> None:
        """Session hook: checkpoint the head this transaction appended, hand it to captures."""
        head = session.info.pop(HEAD_INFO, None)
        if head is None:
            return
        sink = _captured.get()
        if sink is not None:
            sink.append(head)
        try:
            self.checkpoint(*head)
        except OSError as err:  # the entry is committed; a later checkpoint covers it
            log.error(
                "cannot write audit checkpoint of entry %d to %s: %s",
                head[0],
                self.checkpoint_path,
                err,
            )

    @staticmethod
    def after_rollback(session: Session) -> None:
        session.info.pop(HEAD_INFO, None)


@dataclass
class Checkpoint:
    line: int
    receipt: Receipt


@dataclass
class VerifyReport:
    """Result of checking the database chain against the checkpoint file."""

    n_checkpoints: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def read_checkpoints(path: Path, public_key_pem: bytes, report: VerifyReport) -> list[Checkpoint]:
    """Every checkpoint line with a valid signature; other lines become problems."""
    if not path.is_file():
        report.problems.append(f"checkpoint file {path} is missing")
        return []
    good = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for n, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                receipt = parse_receipt(json.loads(line))
            except json.JSONDecodeError:
                receipt = None
            if receipt is None:
                report.problems.append(f"checkpoint line {n}: not a valid checkpoint")
                continue
            why = verify_receipt(receipt, public_key_pem)
            if why:
                report.problems.append(f"checkpoint line {n} (entry {receipt.seq}): {why}")
                continue
            good.append(Checkpoint(n, receipt))
    report.n_checkpoints = len(good)
    return good


MAX_LISTED = 20  # mismatches named one by one; the rest are counted


def _compare(session: Session, checkpoints: list[Checkpoint], report: VerifyReport) -> None:
    """Every checkpointed ``(seq, entry_hash)`` must be in the database with that hash."""
    by_seq: dict[int, Checkpoint] = {}
    for cp in checkpoints:
        by_seq.setdefault(cp.receipt.seq, cp)
    last_seq = 0
    mismatches: list[tuple[int, str]] = []
    rows = session.execute(
        select(AuditEntry.seq, AuditEntry.entry_hash).order_by(AuditEntry.seq)
    ).yield_per(10_000)
    for seq, entry_hash in rows:
        last_seq = seq
        cp = by_seq.pop(seq, None)
        if cp is not None and cp.receipt.entry_hash != entry_hash:
            mismatches.append(
                (
                    seq,
                    f"entry {seq}: hash {entry_hash[:12]} differs from the signed checkpoint on "
                    f"line {cp.line} ({cp.receipt.entry_hash[:12]}): entry rewritten, or entries "
                    "before it deleted and renumbered",
                )
            )
    for seq, cp in sorted(by_seq.items()):
        what = "truncated from the end" if seq > last_seq else "deleted"
        mismatches.append(
            (
                seq,
                f"entry {seq}: missing from the database ({what}), but signed in checkpoint "
                f"line {cp.line}; the database ends at entry {last_seq}",
            )
        )
    mismatches.sort(key=lambda m: m[0])
    report.problems.extend(text for _, text in mismatches[:MAX_LISTED])
    if len(mismatches) > MAX_LISTED:
        report.problems.append(
            f"... and {len(mismatches) - MAX_LISTED} more checkpointed entries that differ"
        )


def _check_tail(session: Session, checkpoints: list[Checkpoint], report: VerifyReport) -> None:
    """Entries after the last checkpoint must chain from it."""
    if not checkpoints:
        return
    last = max(checkpoints, key=lambda cp: cp.receipt.seq).receipt
    following = session.get(AuditEntry, last.seq + 1)
    if following is not None and following.prev_hash != last.entry_hash:
        report.problems.append(
            f"entry {last.seq + 1}: does not chain from the last checkpoint (entry {last.seq})"
        )


def verify_checkpoints(session: Session, path: Path, public_key_pem: bytes) -> VerifyReport:
    """Check the database audit log against the signed checkpoints in ``path``.

    Parameters
    ----------
    session : Session
        Open on the coordinator database.
    path : Path
        The checkpoint file.
    public_key_pem : bytes
        The coordinator's public key.

    Returns
    -------
    VerifyReport
        Problems: lines with a bad signature (by line number), checkpointed entries
        whose hash differs or that are gone (by sequence number, first mismatch
        first), and a tail that does not chain from the last checkpoint.
    """
    report = VerifyReport()
    checkpoints = read_checkpoints(Path(path), public_key_pem, report)
    _compare(session, checkpoints, report)
    _check_tail(session, checkpoints, report)
    return report


def check_latest(session: Session, path: Path, public_key_pem: bytes) -> str | None:
    """Quick start-up check: does the database still hold the newest checkpointed entry?

    Returns
    -------
    str or None
        What is wrong, or None (also when there are no checkpoints yet).
    """
    report = VerifyReport()
    checkpoints = read_checkpoints(Path(path), public_key_pem, VerifyReport())
    if not checkpoints:
        return None
    latest = max(checkpoints, key=lambda cp: cp.receipt.seq)
    _compare(session, [latest], report)
    return report.problems[0] if report.problems else None


ADVICE = (
    "The audit log in the database disagrees with the signed checkpoints. Stop the service "
    "(no more writes), preserve copies of the database and of the checkpoint file, compare "
    "them from the first mismatch named above, restore the database from the last backup that "
    "verifies, and notify the sites and researchers (they can check their receipts with "
    "`confed site verify-receipts`). See docs/operator/guide.md, 'Checkpoints and receipts'."
)
