"""Signed receipts of the coordinator's audit log, kept and checked by the site.

Every answer to an upload carries a receipt: the coordinator's signature over
the sequence number and hash of the audit entry that records the upload, the
time and the fingerprint of the coordinator's Ed25519 key. The site keeps each
receipt in ``receipts.jsonl`` next to its config and pins the coordinator's
public key on first use (``coordinator_audit_key.pem``, also next to the
config). ``confed site verify-receipts`` later asks the coordinator for the
current hash of each receipted entry: a rewritten, deleted or truncated audit
log no longer shows the hash the coordinator signed.

This module needs only the public key; the coordinator imports
:class:`Receipt`, :func:`receipt_payload` and :func:`verify_receipt` from here
so that one definition serves both sides.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from pydantic import BaseModel, Field, ValidationError

from sites.keys import fingerprint, load_public_key

RECEIPTS_FILE = "receipts.jsonl"
PINNED_KEY_FILE = "coordinator_audit_key.pem"
STATEMENT = "confed.audit.head.v1"


class Receipt(BaseModel):
    """The coordinator's signed statement "entry ``seq`` of my audit log has hash ``entry_hash``".

    Checkpoints in the coordinator's checkpoint file have the same form.
    """

    seq: int = Field(ge=1, description="sequence number of the audit entry recording the action")
    entry_hash: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="hash of that entry (the chain head at that entry)"
    )
    ts: str = Field(description="when the coordinator signed this (UTC, ISO 8601)")
    key_fingerprint: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the coordinator's raw Ed25519 key"
    )
    signature: str = Field(description="Ed25519 signature (base64) over the canonical payload")


def receipt_payload(seq: int, entry_hash: str, ts: str, key_fingerprint: str) -> bytes:
    """The canonical bytes the coordinator signs.

    Parameters
    ----------
    seq, entry_hash, ts, key_fingerprint
        The receipt's fields other than the signature.

    Returns
    -------
    bytes
        Compact JSON with sorted keys and a statement type (domain separation).
    """
    body = {
        "statement": STATEMENT,
        "seq": seq,
        "entry_hash": entry_hash,
        "ts": ts,
        "key_fingerprint": key_fingerprint,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def verify_receipt(receipt: Receipt, public_key_pem: bytes) -> str | None:
    """Check a receipt's signature with the coordinator's public key.

    Parameters
    ----------
    receipt : Receipt
        As returned by the coordinator or read from a file.
    public_key_pem : bytes
        The coordinator's Ed25519 public key (PEM).

    Returns
    -------
    str or None
        None when valid, otherwise why not.
    """
    key = load_public_key(public_key_pem, "coordinator key")
    if receipt.key_fingerprint != fingerprint(key):
        return (
            f"signed by key {receipt.key_fingerprint[:16]}..., not by the coordinator key "
            f"{fingerprint(key)[:16]}..."
        )
    payload = receipt_payload(receipt.seq, receipt.entry_hash, receipt.ts, receipt.key_fingerprint)
    try:
        key.verify(base64.b64decode(receipt.signature, validate=True), payload)
    except (InvalidSignature, ValueError):
        return "signature does not verify"
    return None


def parse_receipt(data: Any) -> Receipt | None:
    """A :class:`Receipt` from a JSON object, or None if it is not one."""
    try:
        return Receipt.model_validate(data)
    except ValidationError:
        return None


def _append_private(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def store_receipt(site_root: Path, receipt: Receipt, context: dict[str, Any]) -> Path:
    """Append a receipt (and what it is for) to ``<site_root>/receipts.jsonl`` (mode 0600)."""
    path = Path(site_root) / RECEIPTS_FILE
    record = {"receipt": receipt.model_dump(), **context}
    _append_private(path, json.dumps(record, sort_keys=True) + "\n")
    return path


def stored_receipts(site_root: Path) -> list[tuple[int, dict[str, Any], Receipt | None]]:
    """Every stored record as ``(line number, record, receipt or None if unreadable)``."""
    path = Path(site_root) / RECEIPTS_FILE
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            out.append((n, {}, None))
            continue
        raw = record.get("receipt") if isinstance(record, dict) else None
        out.append((n, record if isinstance(record, dict) else {}, parse_receipt(raw)))
    return out


def pinned_key(site_root: Path) -> bytes | None:
    """The coordinator public key pinned at the first submission, if any."""
    path = Path(site_root) / PINNED_KEY_FILE
    return path.read_bytes() if path.is_file() else None


def pin_key(site_root: Path, public_key_pem: bytes) -> Path:
    """Pin the coordinator's public key (trust on first use; never overwritten)."""
    load_public_key(public_key_pem, "coordinator key")
    path = Path(site_root) / PINNED_KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(public_key_pem)
    return path
