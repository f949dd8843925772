"""API tokens and identities.

Tokens carry 256 bits from :mod:`secrets`, are shown once, and only their SHA-256
is stored; they expire and can be revoked. Roles: ``admin``, ``steering``,
``site`` (bound to one site), ``researcher``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from consortium.db.base import utcnow
from consortium.db.models import ROLES, Site, Token
from consortium.errors import ConfedError

TOKEN_PREFIX = "cfd_"
TOKEN_BYTES = 32  # 256 bits


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Identity:
    """Who is calling: the token's role and, for sites, the site it may act for."""

    token_id: int
    role: str
    site_id: str | None

    @property
    def actor(self) -> str:
        who = f"site:{self.site_id}" if self.role == "site" else self.role
        return f"{who}/token:{self.token_id}"


def issue_token(
    session: Session, role: str, site_id: str | None = None, label: str = "", days: int = 365
) -> tuple[Token, str]:
    """Create a token; returns the row and the plaintext (never stored)."""
    if role not in ROLES:
        raise ConfedError("bad_role", f"unknown role {role!r}; expected one of {ROLES}")
    if (role == "site") != (site_id is not None):
        raise ConfedError("bad_role", "a site token needs a site id, and only site tokens have one")
    if site_id is not None and session.get(Site, site_id) is None:
        raise ConfedError("not_found", f"site {site_id} not found", 404)
    if days <= 0:
        raise ConfedError("bad_expiry", f"token lifetime must be positive, got {days} days")
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    token = Token(
        token_hash=hash_token(plaintext),
        role=role,
        site_id=site_id,
        label=label,
        expires_at=utcnow() + timedelta(days=days),
    )
    session.add(token)
    session.flush()
    return token, plaintext


def authenticate(session: Session, plaintext: str | None) -> Identity:
    """The identity of a bearer token, or a 401 error saying why not."""
    if not plaintext:
        raise ConfedError("unauthorized", "missing bearer token", 401)
    token = session.execute(
        select(Token).where(Token.token_hash == hash_token(plaintext))
    ).scalar_one_or_none()
    if token is None:
        raise ConfedError("unauthorized", "unknown token", 401)
    return check_token(token)


def check_token(token: Token) -> Identity:
    """The identity of a stored token, or a 401 error if it is revoked or expired."""
    if token.revoked_at is not None:
        raise ConfedError("unauthorized", f"token {token.id} was revoked", 401)
    if token.expires_at <= utcnow():
        raise ConfedError("unauthorized", f"token {token.id} expired at {token.expires_at}", 401)
    return Identity(token.id, token.role, token.site_id)


def revoke(session: Session, token_id: int) -> Token:
    token = session.get(Token, token_id)
    if token is None:
        raise ConfedError("not_found", f"token {token_id} not found", 404)
    if token.revoked_at is None:
        token.revoked_at = utcnow()
    return token
