"""Rendering: one Jinja2 environment (autoescaped), the page frame, pagination, form parsing."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import BaseModel, ValidationError

from consortium.analysis.params import format_validation_error
from consortium.errors import ConfedError

M = TypeVar("M", bound=BaseModel)

#: Messages a redirect may ask the next page to show (never user text from the URL).
FLASH = {
    "created": "Created.",
    "saved": "Saved.",
    "submitted": "Submitted for review.",
    "voted": "Your vote was recorded.",
    "consent": "Your site's answer was recorded.",
    "activated": "The proposal is active.",
    "revoked": "Revoked.",
    "read": "Marked as read.",
    "role": "Role changed; the member's open sessions were ended.",
    "queued": "The analysis was queued.",
    "signed_out": "You are signed out.",
}


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("consortium.portal", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = lambda d: d.strftime("%Y-%m-%d %H:%M UTC") if d else "—"
    return env


def nav(identity) -> list[tuple[str, str]]:
    """(label, link) of the navigation for the caller's role."""
    if identity is None:
        return []
    items = [("Dashboard", "/"), ("Notifications", "/notifications"), ("Proposals", "/proposals")]
    if identity.role in ("admin", "steering"):
        items += [("Sites", "/sites"), ("Releases", "/releases"), ("Analyses", "/analyses")]
    if identity.role == "site":
        items.append(("My site", f"/sites/{identity.site_id}"))
    if identity.role == "admin":
        items += [("Audit log", "/audit"), ("Members", "/admin/members"),
                  ("Tokens", "/admin/tokens")]
    return items


def page(request: Request, template: str, http_status: int = 200, **context: Any) -> HTMLResponse:
    """Render ``template`` inside the frame (navigation, sign-out form with CSRF token)."""
    identity = getattr(request.state, "identity", None)
    flash = FLASH.get(request.query_params.get("done", ""))
    html = environment().get_template(template).render(
        identity=identity,
        csrf_token=getattr(request.state, "csrf_token", ""),
        nav=nav(identity),
        path=request.url.path,
        flash=flash,
        **context,
    )
    headers = {
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
        "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        "Referrer-Policy": "same-origin",
    }
    return HTMLResponse(html, http_status, headers=headers)


def done(url: str, what: str) -> RedirectResponse:
    """Post/redirect/get: 303 to ``url`` showing the fixed message ``FLASH[what]``."""
    sep = "&" if "?" in url else "?"
    return RedirectResponse(f"{url}{sep}done={what}", 303)


def parse(model: type[M], **fields: Any) -> M:
    """Validate form fields with the API's own schema; 422 naming the fields otherwise."""
    try:
        return model(**fields)
    except ValidationError as exc:
        raise ConfedError("invalid_request", format_validation_error(exc), 422) from exc


def api_dependency(endpoint: Callable, parameter: str = "identity") -> Callable:
    """The dependency an API endpoint declares for ``parameter`` (its authorization).

    Portal routes use it so they admit exactly the callers the API route admits.
    """
    default = inspect.signature(endpoint).parameters[parameter].default
    return default.dependency


@dataclass
class Page:
    """One page of a list."""

    items: Sequence[Any]
    number: int
    pages: int
    total: int

    @property
    def has_prev(self) -> bool:
        return self.number > 1

    @property
    def has_next(self) -> bool:
        return self.number < self.pages


def paginate(total: int, number: int, size: int) -> tuple[int, int, int]:
    """(page number clipped to the range, number of pages, offset)."""
    pages = max(1, math.ceil(total / size))
    number = min(max(1, number), pages)
    return number, pages, (number - 1) * size
