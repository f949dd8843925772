"""FastAPI dependencies: the coordinator handle, the caller's identity, role checks."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from consortium.auth import Identity, authenticate
from consortium.coordinator import Coordinator
from consortium.errors import ConfedError

_bearer = HTTPBearer(auto_error=False, description="API token issued by the coordinator")


def get_coordinator(request: Request) -> Coordinator:
    return request.app.state.coordinator


def get_identity(
    request: Request,
    creds: HTTPAuthorizationCredentials | None = Depends(_bearer),
    coord: Coordinator = Depends(get_coordinator),
) -> Identity:
    checked = getattr(request.state, "identity", None)  # by the guard, before the body
    if checked is not None:
        return checked
    if creds is None or creds.scheme.lower() != "bearer":
        raise ConfedError("unauthorized", "missing bearer token", 401)
    with coord.db.session() as session:
        identity = authenticate(session, creds.credentials)
    request.state.identity = identity
    return identity


def require_roles(*roles: str) -> Callable[..., Identity]:
    """A dependency admitting only callers whose token has one of ``roles``."""

    def _check(identity: Identity = Depends(get_identity)) -> Identity:
        if identity.role not in roles:
            raise ConfedError(
                "forbidden", f"role {identity.role!r} may not do this (needs one of {roles})", 403
            )
        return identity

    return _check


def check_site_access(identity: Identity, site_id: str) -> None:
    """Sites may only see and act for themselves; admin and steering see all."""
    if identity.role == "site" and identity.site_id != site_id:
        raise ConfedError(
            "forbidden", f"token of site {identity.site_id} may not act for site {site_id}", 403
        )
    if identity.role not in ("site", "admin", "steering"):
        raise ConfedError("forbidden", f"role {identity.role!r} may not access site data", 403)
