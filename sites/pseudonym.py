"""Pseudonymization: subject identifiers replaced by a keyed hash.

The key of a subject is ``HMAC-SHA256(secret, "<site_id>:<subject_id>")`` in
hexadecimal (64 characters). The secret never leaves the site, so nobody else
can recompute or reverse the mapping, while the site itself gets the same key
for the same subject in every submission (longitudinal updates, withdrawals).

References
----------
.. [1] Krawczyk H., Bellare M., Canetti R. (1997). HMAC: keyed-hashing for
   message authentication. RFC 2104.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from sites.keys import write_private_file

SECRET_BYTES = 32


class SecretError(ValueError):
    """A pseudonymization secret that is missing or malformed."""


def new_secret(path: str | Path) -> Path:
    """Write a new random secret (hex) to ``path`` with permissions 0600."""
    return write_private_file(Path(path), secrets.token_hex(SECRET_BYTES).encode() + b"\n")


def load_secret(path: str | Path) -> bytes:
    """Read a secret written by :func:`new_secret`."""
    path = Path(path)
    try:
        text = path.read_text().strip()
        secret = bytes.fromhex(text)
    except FileNotFoundError as exc:
        raise SecretError(f"{path}: pseudonymization secret not found") from exc
    except ValueError as exc:
        raise SecretError(f"{path}: pseudonymization secret is not hexadecimal") from exc
    if len(secret) < 16:
        raise SecretError(f"{path}: pseudonymization secret shorter than 16 bytes")
    return secret


def subject_key(secret: bytes, site_id: str, subject_id: str) -> str:
    """Pseudonym of one subject (64 hex characters)."""
    message = f"{site_id}:{subject_id}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()
