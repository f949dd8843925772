"""Application factory and the JSON error shape."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from consortium.api.guard import ANONYMOUS, Guard, audit_denial
from consortium.coordinator import Coordinator
from consortium.errors import ConfedError
from consortium.portal.errors import error_page
from consortium.portal.gate import is_portal_path
from consortium.portal.routes import mount as mount_portal
from consortium.settings import Settings

log = logging.getLogger("confed.coordinator")

API_PREFIX = "/api/v1"
VERSION = "0.1.0"


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "invalid",
    429: "too_many_requests",
}
# served without a token (the guard lets them through unauthenticated)
PUBLIC_PATHS = (
    f"{API_PREFIX}/health",
    f"{API_PREFIX}/register",
    f"{API_PREFIX}/openapi.json",
    f"{API_PREFIX}/docs",
    "/docs/oauth2-redirect",
)
# routes that stream their own body with their own size limit
STREAMED_ROUTES = (("POST", f"{API_PREFIX}/submissions"),)
# routes with their own body cap (a Settings field): a site's per-feature federated message
SIZED_ROUTES = (
    ("POST", rf"{API_PREFIX}/federated/tasks/[^/]+/result", "max_federated_message_bytes"),
)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ConfedError)
    async def _confed(req: Request, exc: ConfedError) -> JSONResponse:
        if exc.status in (401, 403):
            identity = getattr(req.state, "identity", None)
            actor = identity.actor if identity is not None else ANONYMOUS
            coord = req.app.state.coordinator
            await run_in_threadpool(audit_denial, coord, actor, req.scope, exc.status, exc.message)
        if is_portal_path(req.url.path):
            return error_page(req, exc.status, exc.message)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(error_body(exc.code, exc.message), exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        if is_portal_path(_req.url.path):
            return error_page(_req, exc.status_code, str(exc.detail))
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(
            error_body("internal_error", f"internal error ({type(exc).__name__}); see server log"),
            500,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        if is_portal_path(_req.url.path):
            return error_page(_req, 422, problems)
        return JSONResponse(error_body("invalid_request", problems), 422)


def create_app(settings: Settings, coordinator: Coordinator | None = None) -> FastAPI:
    """Build the coordinator API.

    Parameters
    ----------
    settings : Settings
        Root, database URL and limits.
    coordinator : Coordinator or None
        An already opened coordinator (tests, the server); opened from settings
        (running migrations) when None.

    Returns
    -------
    fastapi.FastAPI
        With every router of :data:`consortium.api.routers.ROUTERS` under ``/api/v1``.
    """
    app = _bare_app()
    app.state.settings = settings
    app.state.coordinator = coordinator or Coordinator(settings)
    return app


def openapi_spec() -> dict:
    """The OpenAPI document, without opening any coordinator."""
    return _bare_app().openapi()


def _bare_app() -> FastAPI:
    from consortium.api.routers import ROUTERS

    app = FastAPI(
        title="confed coordinator",
        version=VERSION,
        description=(
            "Authenticated ingest of signed site bundles, versioned storage, immutable data "
            "releases and a hash-chained audit trail. Authenticate with "
            "`Authorization: Bearer <token>`. Errors are "
            '`{"error": {"code": "...", "message": "..."}}`.'
        ),
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )
    _install_error_handlers(app)
    app.add_middleware(
        Guard, public=PUBLIC_PATHS, streamed=STREAMED_ROUTES, sized=SIZED_ROUTES
    )
    for router in ROUTERS:
        app.include_router(router, prefix=API_PREFIX)
    mount_portal(app)  # the web portal at / (issue #14)
    return app
