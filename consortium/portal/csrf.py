"""CSRF: a synchronizer token bound to the session, checked on every state-changing request.

Signed-in forms carry the session's ``csrf_token`` (stored server-side with the
session); the sign-in forms, before any session exists, carry a random value that
must equal the ``confed_presession`` cookie (double submit). Cross-origin posts are
already refused by :func:`consortium.portal.gate.cross_site` before this runs.
"""

from __future__ import annotations

import hmac
import secrets

from fastapi import Request

from consortium.errors import ConfedError
from consortium.portal.gate import SAFE_METHODS
from consortium.portal.sessions import PRE_COOKIE


async def csrf_protect(request: Request) -> None:
    """Router dependency: refuse a POST whose form lacks the expected CSRF token."""
    if request.method in SAFE_METHODS:
        return
    form = await request.form()
    sent = str(form.get("csrf_token", ""))
    expected = getattr(request.state, "csrf_token", None) or request.cookies.get(PRE_COOKIE)
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise ConfedError("csrf_failed", "the form's CSRF token is missing or wrong; reload", 403)


def new_presession() -> str:
    return secrets.token_urlsafe(24)
