"""The portal's part of the request guard: session cookie instead of bearer token.

Called by :class:`consortium.api.guard.Guard` for every path outside the API, before
any body is read (the guard's body cap then applies as for the API):

- state-changing requests coming from another origin are refused (``Origin`` must
  be this server's, ``Sec-Fetch-Site`` must be ``same-origin`` or ``none``);
- the public pages (sign-in, the style sheet) pass without a session;
- every other page needs a live session (:func:`consortium.portal.sessions.lookup`);
  without one, a GET is redirected to the sign-in page and anything else gets 401.
"""

from __future__ import annotations

from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool

from consortium.auth import Identity
from consortium.errors import ConfedError
from consortium.portal.sessions import COOKIE, lookup
from consortium.portal.settings import PortalSettings

API_PREFIXES = ("/api/", "/docs/")
PUBLIC = ("/signin", "/static/portal.css", "/favicon.ico")
PUBLIC_PREFIXES = ("/signin/link/",)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def is_portal_path(path: str) -> bool:
    """True for every path the portal answers (everything outside the API)."""
    return not path.startswith(API_PREFIXES) and path != "/api"


def is_public(path: str) -> bool:
    return path in PUBLIC or path.startswith(PUBLIC_PREFIXES)


def header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def cookie(scope: dict[str, Any], name: str) -> str | None:
    raw = header(scope, b"cookie")
    if not raw:
        return None
    jar = SimpleCookie()
    try:
        jar.load(raw)
    except CookieError:
        return None
    return jar[name].value if name in jar else None


def own_origin(scope: dict[str, Any]) -> str:
    server = scope.get("server") or ("", "")
    host = header(scope, b"host") or f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}"


def cross_site(scope: dict[str, Any]) -> str | None:
    """Why a state-changing request must be refused as cross-site, or None."""
    fetch_site = header(scope, b"sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"cross-site form post refused (Sec-Fetch-Site: {fetch_site})"
    origin = header(scope, b"origin")
    if origin is not None and origin != own_origin(scope):
        return f"cross-site form post refused (Origin {origin[:100]} is not this portal)"
    return None


def secure_cookies(scope: dict[str, Any]) -> bool:
    """Secure cookies unless both the server and the requested host are loopback."""
    server = (scope.get("server") or ("",))[0]
    host = (header(scope, b"host") or "").rsplit(":", 1)[0].strip("[]")
    return scope.get("scheme") == "https" or not (server in LOOPBACK and host in LOOPBACK)


def _resolve(coord, sid: str | None) -> tuple[Identity, str] | ConfedError:
    idle = PortalSettings.load(coord.settings.root).idle_seconds
    with coord.db.session() as session:
        try:
            identity, row = lookup(session, sid, idle)
        except ConfedError as err:
            return err  # committed: a refused session stays ended
        return identity, row.csrf_token


async def _html(send, status: int, message: str, headers=()) -> None:
    from html import escape

    body = (
        "<!doctype html><html lang=en><title>confed portal</title>"
        f"<p>{escape(message)}</p><p><a href=/signin>Sign in</a></p></html>"
    ).encode()
    raw = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *((k.encode(), v.encode()) for k, v in headers),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def gate(coord, scope: dict[str, Any], send) -> bool:
    """Admit a portal request (True, identity in ``scope['state']``) or answer it (False)."""
    if scope["method"] not in SAFE_METHODS:
        why = cross_site(scope)
        if why:
            await _html(send, 403, why)
            return False
    if is_public(scope["path"]):
        return True
    found = await run_in_threadpool(_resolve, coord, cookie(scope, COOKIE))
    if isinstance(found, ConfedError):
        if scope["method"] in SAFE_METHODS:
            target = scope["path"] + ("?" + scope["query_string"].decode() if scope.get(
                "query_string") else "")
            location = f"/signin?next={quote(target, safe='')}&why={quote(found.message)}"
            await _html(send, 303, found.message, [("location", location)])
        else:
            await _html(send, 401, found.message)
        return False
    identity, csrf = found
    state = scope.setdefault("state", {})
    state["identity"], state["csrf_token"] = identity, csrf
    return True
