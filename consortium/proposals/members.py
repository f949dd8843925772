"""Named members (researchers and steering-committee members) and their tokens.

A researcher's token is bound to the member who holds it; grants belong to members,
so a token reaches exactly the grants of its holder and nothing else.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from consortium import audit
from consortium.auth import Identity, issue_token
from consortium.errors import ConfedError
from consortium.proposals.models import Member, MemberToken

MEMBER_ROLES = ("researcher", "steering")


def create_member(
    session: Session, name: str, institution: str, email: str, role: str, actor: str, days: int
) -> tuple[Member, str]:
    """Register a member and issue their first token (plaintext returned once)."""
    if role not in MEMBER_ROLES:
        raise ConfedError("bad_role", f"member role must be one of {MEMBER_ROLES}, got {role!r}")
    member = Member(name=name, institution=institution, email=email, role=role)
    session.add(member)
    session.flush()
    plaintext = issue_member_token(session, member, actor, days)
    audit.append(session, actor, "member.add", f"member:{member.id}", {"role": role, "name": name})
    return member, plaintext


def issue_member_token(session: Session, member: Member, actor: str, days: int) -> str:
    token, plaintext = issue_token(
        session, member.role, label=f"member {member.id} {member.name}", days=days
    )
    session.add(MemberToken(token_id=token.id, member_id=member.id))
    session.flush()
    audit.append(session, actor, "token.issue", f"token:{token.id}", {"member": member.id})
    return plaintext


def get_member(session: Session, member_id: int) -> Member:
    member = session.get(Member, member_id)
    if member is None:
        raise ConfedError("not_found", f"member {member_id} not found", 404)
    return member


def member_of(session: Session, identity: Identity) -> Member | None:
    """The member holding the caller's token, or None (admin, site, unbound tokens)."""
    link = session.get(MemberToken, identity.token_id)
    return session.get(Member, link.member_id) if link is not None else None


def require_member(session: Session, identity: Identity, role: str) -> Member:
    member = member_of(session, identity)
    if member is None or member.role != role or identity.role != role:
        raise ConfedError(
            "forbidden", f"token {identity.token_id} is not bound to a {role} account", 403
        )
    return member


def list_members(session: Session) -> list[Member]:
    return list(session.execute(select(Member).order_by(Member.id)).scalars())
