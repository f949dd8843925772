"""API tokens: who am I, issue, list, revoke."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy import select

from consortium import audit
from consortium.api.deps import get_coordinator, get_identity, require_roles
from consortium.api.schemas import (
    ERROR_RESPONSES,
    IdentityOut,
    IdPath,
    TokenCreate,
    TokenIssued,
    TokenOut,
)
from consortium.auth import Identity, issue_token, revoke
from consortium.coordinator import Coordinator
from consortium.db.models import Token

router = APIRouter(prefix="/tokens", tags=["tokens"], responses=ERROR_RESPONSES)
admin = require_roles("admin")


@router.get("/me", response_model=IdentityOut, summary="The caller's identity")
def whoami(identity: Identity = Depends(get_identity)) -> IdentityOut:
    return IdentityOut(token_id=identity.token_id, role=identity.role, site_id=identity.site_id)


@router.post("", response_model=TokenIssued, status_code=201, summary="Issue a token (admin)")
def create_token(
    body: TokenCreate,
    identity: Identity = Depends(admin),
    coord: Coordinator = Depends(get_coordinator),
) -> TokenIssued:
    with coord.db.session() as session:
        token, plaintext = issue_token(session, body.role, body.site_id, body.label, body.days)
        audit.append(
            session,
            identity.actor,
            "token.issue",
            f"token:{token.id}",
            {"role": body.role, "site": body.site_id},
        )
        return TokenIssued(token=plaintext, info=TokenOut.model_validate(token))


@router.get("", response_model=list[TokenOut], summary="List tokens, never their secrets (admin)")
def list_tokens(
    identity: Identity = Depends(admin), coord: Coordinator = Depends(get_coordinator)
) -> list[TokenOut]:
    with coord.db.session() as session:
        rows = session.execute(select(Token).order_by(Token.created_at, Token.id)).scalars()
        out = [TokenOut.model_validate(t) for t in rows]
        audit.append(session, identity.actor, "token.list", "tokens", {})
        return out


@router.delete("/{token_id}", response_model=TokenOut, summary="Revoke a token (admin)")
def revoke_token(
    token_id: IdPath,
    identity: Identity = Depends(admin),
    coord: Coordinator = Depends(get_coordinator),
) -> TokenOut:
    with coord.db.session() as session:
        token = revoke(session, token_id)
        audit.append(session, identity.actor, "token.revoke", f"token:{token_id}", {})
        return TokenOut.model_validate(token)
