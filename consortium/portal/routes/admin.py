"""Administration (admin): members and roles, tokens (issue, list, revoke), sign-in links."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import Response
from sqlalchemy import func, select

from consortium.api.deps import get_coordinator
from consortium.api.routers import members as api_members
from consortium.api.routers import tokens as api_tokens
from consortium.api.schemas import IdPath, TokenCreate, TokenOut
from consortium.auth import Identity
from consortium.coordinator import Coordinator
from consortium.db.models import Site, Token
from consortium.portal.accounts import change_member_role
from consortium.portal.csrf import csrf_protect
from consortium.portal.render import Page, api_dependency, done, page, paginate, parse
from consortium.portal.sessions import end_sessions_of_token, issue_link
from consortium.portal.settings import PortalSettings
from consortium.proposals.members import list_members
from consortium.proposals.models import MemberToken
from consortium.proposals.schemas import MemberCreate

router = APIRouter(prefix="/admin", dependencies=[Depends(csrf_protect)])
admin = api_dependency(api_members.post_member)


def _base_url(request: Request, coord: Coordinator) -> str:
    configured = PortalSettings.load(coord.settings.root).public_url
    return (configured or str(request.base_url)).rstrip("/")


@router.get("/members", summary="Members and roles (admin)")
def members_page(
    request: Request,
    identity: Identity = Depends(admin),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    with coord.db.session() as session:
        members = list_members(session)
        return page(request, "members.html", members=members)


@router.post("/members", summary="Add a member (admin)")
def members_add(
    request: Request,
    name: str = Form("", max_length=256),
    institution: str = Form("", max_length=256),
    email: str = Form("", max_length=256),
    role: str = Form("", max_length=32),
    days: int = Form(365),
    identity: Identity = Depends(admin),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    body = parse(MemberCreate, name=name, institution=institution, email=email, role=role,
                 days=days)
    created = api_members.post_member(body=body, identity=identity, coord=coord)
    with coord.db.session() as session:
        token_id = session.execute(select(MemberToken.token_id).where(
            MemberToken.member_id == created.member.id)).scalars().first()
        link = issue_link(session, token_id, identity.actor,
                          PortalSettings.load(coord.settings.root).link_hours)
    return page(request, "secret.html", 201, what=f"member {created.member.name}",
                token=created.token, link=f"{_base_url(request, coord)}/signin/link/{link}")


@router.post("/members/{member_id}/role", summary="Change a member's role (admin)")
def members_role(
    member_id: IdPath,
    role: str = Form("", max_length=32),
    identity: Identity = Depends(api_dependency(api_members.post_member_token)),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    with coord.db.session() as session:
        change_member_role(session, member_id, role, identity.actor)
    return done("/admin/members", "role")


@router.get("/tokens", summary="Tokens, never their secrets (admin)")
def tokens_page(
    request: Request,
    page_number: int = Query(1, alias="page", ge=1, le=1_000_000),
    identity: Identity = Depends(api_dependency(api_tokens.list_tokens)),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    from consortium import audit

    size = PortalSettings.load(coord.settings.root).page_size
    with coord.db.session() as session:
        total = session.execute(select(func.count()).select_from(Token)).scalar()
        number, pages, offset = paginate(total, page_number, size)
        rows = session.execute(select(Token).order_by(Token.created_at.desc(), Token.id.desc())
                               .offset(offset).limit(size)).scalars().all()
        pg = Page([TokenOut.model_validate(t) for t in rows], number, pages, total)
        sites = session.execute(select(Site.id).order_by(Site.id)).scalars().all()
        audit.append(session, identity.actor, "token.list", "tokens", {"page": number})
        return page(request, "tokens.html", pg=pg, sites=sites)


@router.post("/tokens", summary="Issue a token (admin)")
def tokens_issue(
    request: Request,
    role: str = Form("", max_length=32),
    site_id: str = Form("", max_length=64),
    label: str = Form("", max_length=256),
    days: int = Form(365),
    identity: Identity = Depends(api_dependency(api_tokens.create_token)),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    body = parse(TokenCreate, role=role, site_id=site_id or None, label=label, days=days)
    issued = api_tokens.create_token(body=body, identity=identity, coord=coord)
    return page(request, "secret.html", 201, what=f"token {issued.info.id}",
                token=issued.token, link="")


@router.post("/tokens/{token_id}/revoke", summary="Revoke a token (admin)")
def tokens_revoke(
    token_id: IdPath,
    identity: Identity = Depends(api_dependency(api_tokens.revoke_token)),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    api_tokens.revoke_token(token_id=token_id, identity=identity, coord=coord)
    with coord.db.session() as session:
        end_sessions_of_token(session, token_id, "token_revoked")
    return done("/admin/tokens", "revoked")


@router.post("/signin-links", summary="Issue a one-time sign-in link for a token (admin)")
def signin_link(
    request: Request,
    token_id: int = Form(..., ge=1, le=2**62),
    identity: Identity = Depends(admin),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    with coord.db.session() as session:
        secret = issue_link(session, token_id, identity.actor,
                            PortalSettings.load(coord.settings.root).link_hours)
    return page(request, "secret.html", 201, what=f"token {token_id}", token="",
                link=f"{_base_url(request, coord)}/signin/link/{secret}")
