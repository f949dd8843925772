"""Sign-in (API token or one-time link), sign-out, and the style sheet."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from consortium.api.deps import get_coordinator, get_identity
from consortium.api.guard import (
    ANONYMOUS,
    audit_denial,
    client_address,
    failed_logins,
    record_refusal,
)
from consortium.auth import Identity
from consortium.coordinator import Coordinator
from consortium.errors import ConfedError
from consortium.portal.csrf import csrf_protect, new_presession
from consortium.portal.gate import secure_cookies
from consortium.portal.render import page
from consortium.portal.sessions import (
    COOKIE,
    PRE_COOKIE,
    end_session,
    sign_in_with_token,
    use_link,
)

router = APIRouter(dependencies=[Depends(csrf_protect)])
CSS = Path(__file__).resolve().parent.parent / "static" / "portal.css"


def _safe_next(target: str) -> str:
    """Only a path on this server (never ``//host`` or a full URL)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _signin_form(request: Request, status: int = 200, error: str = "", **extra) -> Response:
    pre = request.cookies.get(PRE_COOKIE) or new_presession()  # keep: other tabs
    response = page(
        request, "signin.html", status, presession=pre, error=error,
        why=request.query_params.get("why", ""),
        next=_safe_next(request.query_params.get("next", "/")), **extra,
    )
    response.set_cookie(PRE_COOKIE, pre, httponly=True, samesite="strict",
                        secure=secure_cookies(request.scope), path="/signin")
    return response


def _signed_in(request: Request, sid: str, target: str) -> Response:
    response = RedirectResponse(_safe_next(target), 303)
    response.set_cookie(COOKIE, sid, httponly=True, samesite="strict",
                        secure=secure_cookies(request.scope), path="/")
    response.delete_cookie(PRE_COOKIE, path="/signin")
    return response


def _refused(coord: Coordinator, request: Request, err: ConfedError) -> Response:
    """The refusal page; counted with the API's refused tokens, and 429 beyond the limit
    (as the API guard does: audited one by one until then, a valid token still works)."""
    wait = failed_logins(coord, request.scope).retry_after(client_address(request.scope))
    if wait:
        response = _signin_form(request, 429, f"Too many refused sign-ins; try again in {wait} s.")
        response.headers["Retry-After"] = str(wait)
        return response
    audit_denial(coord, ANONYMOUS, request.scope, err.status, err.message, "portal.signin.denied")
    record_refusal(coord, request.scope)
    return _signin_form(request, 401, f"Sign-in refused: {err.message}")


@router.get("/signin", summary="Sign-in page")
def signin_page(request: Request) -> Response:
    return _signin_form(request)


@router.post("/signin", summary="Sign in with an API token")
def signin(
    request: Request,
    token: str = Form("", max_length=200),
    next: str = Form("/", max_length=2000),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    try:
        with coord.db.session() as session:
            sid, _row = sign_in_with_token(session, token)
    except ConfedError as err:
        return _refused(coord, request, err)
    return _signed_in(request, sid, next)


@router.get("/signin/link/{secret}", summary="Confirm a one-time sign-in link")
def link_page(secret: str, request: Request) -> Response:
    return _signin_form(request, link=secret)


@router.post("/signin/link/{secret}", summary="Sign in with a one-time link")
def link_signin(
    secret: str, request: Request, coord: Coordinator = Depends(get_coordinator)
) -> Response:
    try:
        with coord.db.session() as session:
            sid, _row = use_link(session, secret)
    except ConfedError as err:
        return _refused(coord, request, err)
    return _signed_in(request, sid, "/")


@router.post("/signout", summary="Sign out")
async def signout(
    request: Request,
    identity: Identity = Depends(get_identity),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    sid = request.cookies.get(COOKIE, "")

    def _end() -> None:
        from consortium import audit

        with coord.db.session() as session:
            end_session(session, sid)
            target = f"token:{identity.token_id}"
            audit.append(session, identity.actor, "portal.signout", target, {})

    await run_in_threadpool(_end)
    response = RedirectResponse("/signin?done=signed_out", 303)
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/static/portal.css", summary="The portal's style sheet")
def stylesheet() -> Response:
    return Response(CSS.read_text(), media_type="text/css",
                    headers={"Cache-Control": "public, max-age=3600"})
