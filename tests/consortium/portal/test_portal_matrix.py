"""Every portal route called by every role, with a real session of that role.

The portal must admit exactly the roles the API admits for the mirrored route
(:mod:`tests.consortium.portal.matrix`). A role without a valid session (anonymous,
unknown cookie, a session of a revoked token) is redirected to the sign-in page
(GET) or gets 401 (POST); a valid session of the wrong role gets 403; a
researcher asking about another researcher's proposal gets the 404 of a proposal
that does not exist.
"""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from consortium.auth import Identity, hash_token
from consortium.db.models import Token
from consortium.portal.sessions import open_session
from tests.consortium.portal.matrix import PORTAL_HIDDEN, PORTAL_MATRIX, PUBLIC
from tests.consortium.test_authorization_matrix import ANYONE, NO_TOKEN, ROLES, World

P = "/api/v1"
CASES = [(m, p) for (m, p), allowed in PORTAL_MATRIX.items() if allowed is not PUBLIC]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("portal-matrix"))
    yield w
    w.close()


def sessions(world: World) -> dict[str, tuple[str | None, str]]:
    """A fresh (cookie, csrf token) per role; no-token roles get none or a dead one."""
    out: dict[str, tuple[str | None, str]] = {"anonymous": (None, ""),
                                              "unknown": (uuid.uuid4().hex, "x")}
    with world.coord.db.session() as s:
        for role in ROLES:
            if role in ("anonymous", "unknown"):
                continue
            token = s.query(Token).filter_by(token_hash=hash_token(world.tokens[role])).one()
            identity = Identity(token.id, token.role, token.site_id)
            sid, row = open_session(s, identity, "test")
            out[role] = (sid, row.csrf_token)
    return out


def _path(world: World, template: str, role: str, own: str, expired: str, extra: dict) -> str:
    values = {
        "code": expired if role == "r_expired" else own,
        "site_id": "S01",
        "name": "r1",
        "job_id": uuid.uuid4().hex,
        "member_id": world.members["r_nogrant"],
        **extra,
    }
    for key, value in values.items():
        template = template.replace("{" + key + "}", str(value))
    return template


FORMS = {
    "/admin/members/{member_id}/role": {"role": "researcher"},  # unchanged: a no-op
}


@pytest.mark.parametrize(("method", "template"), CASES, ids=lambda x: str(x))
def test_portal_route_admits_exactly_the_api_roles(world, method, template):
    own = world.active_proposal("r_grant") if "{code}" in template else ""
    expired = world.active_proposal("r_expired", expired=True) if own else ""
    extra = {}
    if "{token_id}" in template:
        extra["token_id"] = world.spare_token()
    if "{export_id}" in template:
        r = world.call("r_grant", "POST", f"{P}/proposals/{own}/exports")
        assert r.status_code == 201, r.text
        extra["export_id"] = r.json()["id"]
    observed = {}
    for role, (sid, csrf) in sessions(world).items():
        path = _path(world, template, role, own, expired, extra)
        cookies = {"confed_session": sid} if sid else {}
        with httpx.Client(base_url=world.server.url, cookies=cookies, timeout=120) as c:
            if method == "GET":
                r = c.get(path)
            else:
                data = {"csrf_token": csrf, **FORMS.get(template, {})}
                if template == "/admin/signin-links":
                    data["token_id"] = str(world.spare_token())
                r = c.post(path, data=data)
        signin = r.status_code == 303 and r.headers["location"].startswith("/signin?next=")
        observed[role] = "signin" if signin else r.status_code
    allowed_set = PORTAL_MATRIX[method, template]
    hidden = PORTAL_HIDDEN.get((method, template), frozenset())
    assert all(s == "signin" or s < 500 for s in observed.values()), observed
    allowed = {r for r, s in observed.items() if s not in (401, 403, "signin")} - hidden
    assert allowed == allowed_set, observed
    for role in hidden:
        assert observed[role] == 404, observed
    for role in ANYONE - allowed_set - hidden:
        if role in NO_TOKEN:
            assert observed[role] == ("signin" if method == "GET" else 401), observed
        else:
            assert observed[role] == 403, observed


@pytest.mark.parametrize("role", ["admin", "r_grant", "site"])
def test_huge_and_odd_ids_are_4xx(world, role):
    from tests.consortium.service.test_trust_api import BAD_INTS, BAD_STRINGS

    sid, token = sessions(world)[role]
    keyed = sorted((m, p) for m, p in CASES if "{" in p)
    with httpx.Client(base_url=world.server.url, cookies={"confed_session": sid},
                      timeout=120) as c:
        for method, template in keyed:
            if template == "/signout":
                continue
            for value in BAD_INTS + BAD_STRINGS:
                path = re.sub(r"\{[a-z_]+\}", str(value), template)
                r = c.request(method, path, data={"csrf_token": token} if method == "POST"
                              else None)
                assert 400 <= r.status_code < 500, (method, path[:80], r.status_code)
