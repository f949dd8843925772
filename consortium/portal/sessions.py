"""Portal sessions: sign-in, lookup on every request, sign-out, one-time sign-in links.

A session id is 256 random bits, sent once in an HttpOnly, SameSite=Strict cookie
and stored only as its SHA-256. A session is refused (and ended, with the reason)
when it was signed out, has been idle longer than ``PortalSettings.idle_seconds``,
when its token is revoked or expired (:func:`consortium.auth.check_token`, the
check the API makes), or when the token's or member's role is no longer the role
the session was opened with.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from consortium import audit
from consortium.auth import Identity, authenticate, check_token
from consortium.db.base import utcnow
from consortium.db.models import Token
from consortium.errors import ConfedError
from consortium.portal.models import PortalSession, SigninLink
from consortium.proposals.models import Member, MemberToken

COOKIE = "confed_session"
PRE_COOKIE = "confed_presession"  # double-submit token of the sign-in forms


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def open_session(session: Session, identity: Identity, how: str) -> tuple[str, PortalSession]:
    """A new session for ``identity``; returns the cookie value (never stored) and the row."""
    sid = secrets.token_urlsafe(32)
    row = PortalSession(
        id_hash=_digest(sid),
        token_id=identity.token_id,
        role=identity.role,
        site_id=identity.site_id,
        csrf_token=secrets.token_urlsafe(32),
    )
    session.add(row)
    session.flush()
    target = f"token:{identity.token_id}"
    audit.append(session, identity.actor, "portal.signin", target, {"how": how})
    return sid, row


def sign_in_with_token(session: Session, plaintext: str) -> tuple[str, PortalSession]:
    """Check an API token as the API does and open a session for it."""
    return open_session(session, authenticate(session, plaintext.strip()), "token")


def _member_role(session: Session, token_id: int) -> str | None:
    link = session.get(MemberToken, token_id)
    member = session.get(Member, link.member_id) if link is not None else None
    return member.role if member is not None else None


def _refuse(row: PortalSession, reason: str, message: str) -> ConfedError:
    if row.ended_at is None:
        row.ended_at, row.end_reason = utcnow(), reason
    return ConfedError("unauthorized", message, 401)


def lookup(session: Session, sid: str | None, idle_seconds: int) -> tuple[Identity, PortalSession]:
    """The identity behind a session cookie, or a 401 error saying why not.

    Refusals end the session in the caller's transaction (commit it even on error:
    see :func:`resolve`).
    """
    if not sid:
        raise ConfedError("unauthorized", "not signed in", 401)
    row = session.get(PortalSession, _digest(sid))
    if row is None:
        raise ConfedError("unauthorized", "unknown session", 401)
    if row.ended_at is not None:
        raise ConfedError("unauthorized", f"session ended ({row.end_reason})", 401)
    now = utcnow()
    if row.last_seen_at + timedelta(seconds=idle_seconds) < now:
        raise _refuse(row, "idle", "session ended after inactivity; sign in again")
    token = session.get(Token, row.token_id)
    try:
        identity = check_token(token)
    except ConfedError as err:
        raise _refuse(row, "token", f"session ended: {err.message}") from err
    member_role = _member_role(session, token.id)
    if identity.role != row.role or identity.site_id != row.site_id or (
        member_role is not None and member_role != row.role
    ):
        raise _refuse(row, "role_changed", "session ended: the account's role changed")
    row.last_seen_at = now
    return identity, row


def end_session(session: Session, sid: str, reason: str = "signed_out") -> None:
    row = session.get(PortalSession, _digest(sid))
    if row is not None and row.ended_at is None:
        row.ended_at, row.end_reason = utcnow(), reason


def end_sessions_of_token(session: Session, token_id: int, reason: str) -> None:
    """End every open session of a token (revocation, role change)."""
    session.execute(
        update(PortalSession)
        .where(PortalSession.token_id == token_id, PortalSession.ended_at.is_(None))
        .values(ended_at=utcnow(), end_reason=reason)
    )


def issue_link(session: Session, token_id: int, actor: str, hours: int) -> str:
    """A one-time sign-in secret for ``token_id`` (plaintext returned once)."""
    token = session.get(Token, token_id)
    if token is None:
        raise ConfedError("not_found", f"token {token_id} not found", 404)
    check_token(token)
    secret = secrets.token_urlsafe(32)
    row = SigninLink(
        secret_hash=_digest(secret),
        token_id=token_id,
        created_by=actor,
        expires_at=utcnow() + timedelta(hours=hours),
    )
    session.add(row)
    session.flush()
    audit.append(session, actor, "portal.link.issue", f"token:{token_id}", {"link": row.id})
    return secret


def use_link(session: Session, secret: str) -> tuple[str, PortalSession]:
    """Consume a one-time link and open a session for its token."""
    row = session.execute(
        select(SigninLink).where(SigninLink.secret_hash == _digest(secret))
    ).scalar_one_or_none()
    if row is None:
        raise ConfedError("unauthorized", "unknown sign-in link", 401)
    if row.used_at is not None:
        raise ConfedError("unauthorized", "this sign-in link was already used", 401)
    if row.expires_at <= utcnow():
        raise ConfedError("unauthorized", f"this sign-in link expired at {row.expires_at}", 401)
    row.used_at = utcnow()
    identity = check_token(session.get(Token, row.token_id))
    return open_session(session, identity, "link")
