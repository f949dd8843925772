"""Errors on portal pages: the app's handlers render these instead of JSON."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import HTMLResponse

from consortium.portal.render import page

HEADINGS = {
    401: "Not signed in",
    403: "Not allowed",
    404: "Not found",
    409: "Not possible now",
    410: "No longer available",
    413: "Too large",
    422: "Please correct the form",
}


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    """The error as a page: status kept, message escaped, a way back."""
    referer = request.headers.get("referer", "")
    back = request.url.path if request.method == "POST" else "/"
    if referer.startswith(str(request.base_url)):
        back = "/" + referer[len(str(request.base_url)):]
    heading = HEADINGS.get(status, "Something went wrong")
    return page(request, "error.html", status, code=status, heading=heading,
                message=message, back=back)
