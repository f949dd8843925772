"""Admin actions the API has no route for: a member's role change, with its sessions ended."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from consortium import audit
from consortium.db.models import Token
from consortium.errors import ConfedError
from consortium.portal.sessions import end_sessions_of_token
from consortium.proposals.members import MEMBER_ROLES, get_member
from consortium.proposals.models import MemberToken


def change_member_role(session: Session, member_id: int, role: str, actor: str) -> None:
    """Give a member (and every token bound to them) a new role; end their sessions."""
    if role not in MEMBER_ROLES:
        raise ConfedError("bad_role", f"member role must be one of {MEMBER_ROLES}, got {role!r}",
                          422)
    member = get_member(session, member_id)
    old = member.role
    if old == role:
        return
    member.role = role
    token_ids = session.execute(
        select(MemberToken.token_id).where(MemberToken.member_id == member.id)).scalars().all()
    for token in session.execute(select(Token).where(Token.id.in_(token_ids))).scalars():
        token.role = role
        end_sessions_of_token(session, token.id, "role_changed")
    audit.append(session, actor, "member.role", f"member:{member.id}", {"from": old, "to": role})
