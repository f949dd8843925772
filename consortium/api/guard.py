"""The request guard: authenticate before any body is read, cap bodies, slow down guessers.

A pure ASGI middleware in front of every route. For every path but the public ones
(health, register, OpenAPI) it checks the bearer token with
:func:`consortium.auth.authenticate` (the function the dependencies use) before
the request body is received, so an anonymous caller cannot make the server read,
buffer or parse anything. The identity is handed to the route through
``request.state.identity``. Bodies of every route but the bundle upload (which
streams to disk with its own limit) are capped at ``Settings.max_json_bytes``, except
routes given their own cap (``sized``: the federated result route, whose per-feature
messages are capped at ``Settings.max_federated_message_bytes``).
Refused tokens are audited (one entry each, in its own transaction) and counted per
client address; past ``Settings.auth_fail_limit`` within ``auth_fail_window``
seconds, requests from that address without a valid token get 429 with
``Retry-After`` (not audited one by one: one ``auth.rate_limited`` entry marks the
start). Valid tokens are still served from a blocked address, so one guesser behind
a shared proxy or NAT does not lock everybody else out. Paths outside the API are
the portal's: :func:`consortium.portal.gate.gate` admits them by session cookie.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from starlette.concurrency import run_in_threadpool

from consortium import audit
from consortium.auth import Identity, authenticate
from consortium.coordinator import Coordinator
from consortium.errors import ConfedError
from consortium.portal.gate import gate as portal_gate
from consortium.portal.gate import is_portal_path

log = logging.getLogger("confed.coordinator")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ANONYMOUS = "anonymous"
MAX_TRACKED_CLIENTS = 10_000


class FailedLogins:
    """Refused tokens per client address in a sliding window (one server process)."""

    def __init__(self, limit: int, window: float):
        self.limit = max(1, limit)
        self.window = window
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> int:
        """Seconds until ``client`` may try again; 0 when it is not blocked."""
        now = time.monotonic()
        with self._lock:
            hits = self._hits.get(client)
            if hits is None or len(hits) < self.limit or hits[0] + self.window <= now:
                return 0
            return max(1, math.ceil(hits[0] + self.window - now))

    def record(self, client: str) -> bool:
        """Count one failure; True when it is the one that reaches the limit."""
        now = time.monotonic()
        with self._lock:
            if len(self._hits) >= MAX_TRACKED_CLIENTS:
                self._forget_before(now - self.window)
            hits = self._hits.setdefault(client, deque(maxlen=self.limit))
            while hits and hits[0] + self.window <= now:
                hits.popleft()
            hits.append(now)
            return len(hits) == self.limit

    def _forget_before(self, cutoff: float) -> None:
        for client in [c for c, h in self._hits.items() if not h or h[-1] <= cutoff]:
            del self._hits[client]


def failed_logins(coord: Coordinator, scope: Scope) -> FailedLogins:
    """The app's one failed-login counter (kept on the app's state), shared by the API guard
    and the portal's sign-in forms: a refused token counts whichever door it was tried at."""
    state = scope["app"].state
    limiter = getattr(state, "failed_logins", None)
    if limiter is None:
        s = coord.settings
        limiter = state.failed_logins = FailedLogins(s.auth_fail_limit, s.auth_fail_window)
    return limiter


def record_refusal(coord: Coordinator, scope: Scope) -> None:
    """Count one refused token from this request's address; audit reaching the limit."""
    limiter = failed_logins(coord, scope)
    if limiter.record(client_address(scope)):
        log.warning("client %s reached %d refused tokens", client_address(scope), limiter.limit)
        reason = f"{limiter.limit} refused tokens within {limiter.window} s"
        audit_denial(coord, ANONYMOUS, scope, 429, reason, "auth.rate_limited")


def audit_denial(
    coord: Coordinator,
    actor: str,
    scope: Scope,
    status: int,
    reason: str,
    action: str = "auth.denied",
) -> None:
    """One audit entry, in its own transaction, for a refused request (never the token)."""
    details = {
        "status": status,
        "method": scope.get("method", ""),
        "client": client_address(scope),
        "reason": reason[:500],
    }
    with coord.db.session() as session:
        audit.append(session, actor, action, scope.get("path", "")[:512], details)


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def bearer_token(scope: Scope) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (as ``HTTPBearer`` reads it)."""
    value = _header(scope, b"authorization")
    if not value:
        return None
    scheme, _, credentials = value.partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


async def _answer(send: Send, status: int, code: str, message: str, headers=()) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.encode(), v.encode()) for k, v in headers),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware; see the module docstring.

    Parameters
    ----------
    app : ASGI application
    public : collection of str
        Paths served without a token.
    streamed : collection of (method, path)
        Routes that read their own body with their own limit.
    sized : collection of (method, path pattern, settings field)
        Routes whose body cap is another ``Settings`` field than ``max_json_bytes``
        (the pattern is a regular expression matched against the whole path).
    """

    def __init__(
        self,
        app: ASGIApp,
        public: Collection[str],
        streamed: Collection[tuple[str, str]],
        sized: Collection[tuple[str, str, str]] = (),
    ):
        self.app = app
        self.public = frozenset(public)
        self.streamed = frozenset(streamed)
        self.sized = [(method, re.compile(pattern), name) for method, pattern, name in sized]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        coord: Coordinator = scope["app"].state.coordinator
        if is_portal_path(scope["path"]):  # session cookie, not bearer token
            if not await portal_gate(coord, scope, send):
                return
        elif scope["path"] not in self.public:
            identity = await self._authenticate(coord, scope, send)
            if identity is None:
                return
            scope.setdefault("state", {})["identity"] = identity
        if (scope["method"], scope["path"]) not in self.streamed:
            receive = await self._capped(coord, scope, receive, send)
            if receive is None:
                return
        await self.app(scope, receive, send)


    async def _authenticate(self, coord: Coordinator, scope: Scope, send: Send) -> Identity | None:
        limiter = failed_logins(coord, scope)
        client = client_address(scope)
        try:
            return await run_in_threadpool(_check_token, coord, bearer_token(scope))
        except ConfedError as err:
            wait = limiter.retry_after(client)
            if wait:
                message = f"too many refused tokens from {client}; try again in {wait} s"
                await _answer(send, 429, "too_many_requests", message, [("retry-after", str(wait))])
                return None
            await run_in_threadpool(audit_denial, coord, ANONYMOUS, scope, err.status, err.message)
            await run_in_threadpool(record_refusal, coord, scope)
            await _answer(send, err.status, err.code, err.message, [("www-authenticate", "Bearer")])
            return None

    def _cap(self, coord: Coordinator, scope: Scope) -> int:
        """The body cap of this request's route (``max_json_bytes`` unless ``sized``)."""
        for method, pattern, name in self.sized:
            if scope["method"] == method and pattern.fullmatch(scope["path"]):
                return int(getattr(coord.settings, name))
        return coord.settings.max_json_bytes

    async def _capped(
        self, coord: Coordinator, scope: Scope, receive: Receive, send: Send
    ) -> Receive | None:
        """``receive`` replaying the whole body once it is known to fit, or None (answered)."""
        cap = self._cap(coord, scope)
        declared = _header(scope, b"content-length")
        chunked = (_header(scope, b"transfer-encoding") or "").lower() == "chunked"
        if declared is None and not chunked:
            return receive
        if declared is not None:
            if not declared.isdigit():
                await _answer(send, 400, "bad_request", "invalid Content-Length")
                return None
            if int(declared) > cap:
                await _too_large(send, cap)
                return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return _replay([message], receive)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > cap:
                await _too_large(send, cap)
                return None
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        return _replay([body], receive)


def _check_token(coord: Coordinator, token: str | None) -> Identity:
    with coord.db.session() as session:
        return authenticate(session, token)


async def _too_large(send: Send, cap: int) -> None:
    await _answer(
        send, 413, "payload_too_large", f"request body larger than the limit of {cap} bytes"
    )


def _replay(messages: list[Message], receive: Receive) -> Receive:
    async def _receive() -> Message:
        return messages.pop(0) if messages else await receive()

    return _receive
