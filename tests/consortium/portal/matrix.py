"""The portal's rows of the route x role matrix.

Each portal route mirrors an API route and must admit exactly the roles the API
route admits: the entries below are the API matrix's own entries wherever a
mirror exists (``API[...]``), so a change of the API's rule changes the portal's
expected rule too. ``PUBLIC`` routes need no session (sign-in, the style sheet);
they are checked in ``test_portal_security.py``.
"""

from __future__ import annotations

from tests.consortium.test_authorization_matrix import (
    ADMIN,
    ANYONE,
    AUTHENTICATED,
    COMMITTEE,
    MATRIX,
    NOT_OWNER,
    RESEARCHERS,
    P,
)

API = MATRIX
PUBLIC = ANYONE

PORTAL_MATRIX: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/signin"): PUBLIC,
    ("POST", "/signin"): PUBLIC,
    ("GET", "/signin/link/{secret}"): PUBLIC,
    ("POST", "/signin/link/{secret}"): PUBLIC,
    ("GET", "/static/portal.css"): PUBLIC,
    ("POST", "/signout"): AUTHENTICATED,
    ("GET", "/"): AUTHENTICATED,
    ("GET", "/notifications"): AUTHENTICATED,
    ("POST", "/notifications/read"): AUTHENTICATED,
    ("GET", "/sites"): API["GET", f"{P}/sites"],
    ("GET", "/sites/{site_id}"): API["GET", f"{P}/sites/{{site_id}}/status"],
    ("GET", "/releases"): API["GET", f"{P}/releases"],
    ("POST", "/releases"): API["POST", f"{P}/releases"],
    ("GET", "/releases/{name}"): API["GET", f"{P}/releases/{{name}}"],
    ("GET", "/proposals"): API["GET", f"{P}/proposals"],
    ("GET", "/proposals/new"): API["POST", f"{P}/proposals"],
    ("POST", "/proposals"): API["POST", f"{P}/proposals"],
    ("GET", "/proposals/{code}"): API["GET", f"{P}/proposals/{{code}}"],
    ("GET", "/proposals/{code}/edit"): API["PATCH", f"{P}/proposals/{{code}}"],
    ("POST", "/proposals/{code}/edit"): API["PATCH", f"{P}/proposals/{{code}}"],
    ("POST", "/proposals/{code}/submit"): API["POST", f"{P}/proposals/{{code}}/submit"],
    ("POST", "/proposals/{code}/votes"): API["POST", f"{P}/proposals/{{code}}/votes"],
    ("POST", "/proposals/{code}/consent"): API["POST", f"{P}/proposals/{{code}}/consent"],
    ("POST", "/proposals/{code}/activate"): API["POST", f"{P}/proposals/{{code}}/activate"],
    ("POST", "/proposals/{code}/exports"): API["POST", f"{P}/proposals/{{code}}/exports"],
    ("GET", "/proposals/{code}/exports/{export_id}"):
        API["GET", f"{P}/proposals/{{code}}/exports/{{export_id}}"],
    ("GET", "/proposals/{code}/analyses"): API["POST", f"{P}/proposals/{{code}}/analyses"],
    ("POST", "/proposals/{code}/analyses"): API["POST", f"{P}/proposals/{{code}}/analyses"],
    ("GET", "/analyses"): API["GET", f"{P}/analyses"],
    ("POST", "/analyses"): API["POST", f"{P}/analyses"],
    ("GET", "/analyses/{job_id}"): API["GET", f"{P}/analyses/{{job_id}}"],
    ("GET", "/analyses/{job_id}/report"): API["GET", f"{P}/analyses/{{job_id}}/report"],
    ("GET", "/audit"): API["GET", f"{P}/audit"],
    ("POST", "/audit/verify"): API["GET", f"{P}/audit/verify"],
    ("GET", "/admin/members"): API["POST", f"{P}/members"],
    ("POST", "/admin/members"): API["POST", f"{P}/members"],
    ("POST", "/admin/members/{member_id}/role"): API["POST", f"{P}/members/{{member_id}}/tokens"],
    ("GET", "/admin/tokens"): API["GET", f"{P}/tokens"],
    ("POST", "/admin/tokens"): API["POST", f"{P}/tokens"],
    ("POST", "/admin/tokens/{token_id}/revoke"): API["DELETE", f"{P}/tokens/{{token_id}}"],
    ("POST", "/admin/signin-links"): ADMIN,
}
# Roles whose role may use the route but who get the 404 of a missing proposal.
PORTAL_HIDDEN = {
    key: NOT_OWNER
    for key in PORTAL_MATRIX
    if "{code}" in key[1] and key not in {
        ("POST", "/proposals/{code}/votes"),
        ("POST", "/proposals/{code}/consent"),
        ("POST", "/proposals/{code}/activate"),
    }
}
assert PORTAL_MATRIX["GET", "/proposals/new"] == RESEARCHERS
assert COMMITTEE <= PORTAL_MATRIX["GET", "/sites/{site_id}"]
