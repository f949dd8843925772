"""Portal sessions and forms against abuse, over a real server process.

Cookie flags; CSRF (synchronizer token and cross-site origin); a session refused
after sign-out, idle timeout, revocation of its token and a role change; one-time
sign-in links; user text escaped on every page that shows it.
"""

from __future__ import annotations

import re
from datetime import timedelta

import httpx
import pytest

from consortium.db.base import utcnow
from consortium.portal.models import PortalSession
from tests.consortium.test_authorization_matrix import REQUEST, World

XSS = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("portal-security"))
    yield w
    w.close()


def sign_in(world: World, token: str) -> httpx.Client:
    c = httpx.Client(base_url=world.server.url, timeout=120)
    c.get("/signin")
    r = c.post("/signin", data={"token": token, "csrf_token": c.cookies["confed_presession"]})
    assert r.status_code == 303 and r.headers["location"] == "/", r.text
    return c


def csrf(c: httpx.Client, path: str = "/") -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', c.get(path).text).group(1)


def refused(c: httpx.Client) -> str:
    r = c.get("/notifications")
    assert r.status_code == 303 and r.headers["location"].startswith("/signin?next="), r.text
    return httpx.URL(r.headers["location"]).params["why"]


def test_cookie_is_httponly_strict_and_not_secure_on_loopback(world):
    c = httpx.Client(base_url=world.server.url, timeout=60)
    c.get("/signin")
    r = c.post("/signin", data={"token": world.tokens["admin"],
                                "csrf_token": c.cookies["confed_presession"]})
    cookie = next(v for k, v in r.headers.multi_items()
                  if k == "set-cookie" and v.startswith("confed_session="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Secure" not in cookie  # loopback; any other host gets Secure


def test_bad_token_is_refused_and_audited(world):
    c = httpx.Client(base_url=world.server.url, timeout=60)
    c.get("/signin")
    r = c.post("/signin", data={"token": "cfd_nope", "csrf_token": c.cookies["confed_presession"]})
    assert r.status_code == 401 and "unknown token" in r.text
    assert "confed_session" not in c.cookies


def test_csrf_token_required_and_cross_site_refused(world):
    c = sign_in(world, world.tokens["admin"])
    token = csrf(c)
    r = c.post("/notifications/read", data={})
    assert r.status_code == 403 and "CSRF" in r.text
    r = c.post("/notifications/read", data={"csrf_token": "wrong"})
    assert r.status_code == 403
    for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site"}):
        r = c.post("/notifications/read", data={"csrf_token": token}, headers=headers)
        assert r.status_code == 403 and "cross-site" in r.text, headers
    r = c.post("/notifications/read", data={"csrf_token": token},
               headers={"Origin": world.server.url, "Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 303


def test_session_refused_after_sign_out(world):
    c = sign_in(world, world.tokens["steering"])
    old = c.cookies["confed_session"]
    r = c.post("/signout", data={"csrf_token": csrf(c)})
    assert r.status_code == 303
    c.cookies.set("confed_session", old)  # a copy of the cookie kept by an attacker
    assert "signed_out" in refused(c)


def test_session_refused_after_idle_timeout(world):
    c = sign_in(world, world.tokens["steering"])
    assert c.get("/").status_code == 200
    with world.coord.db.session() as s:
        for row in s.query(PortalSession).filter(PortalSession.ended_at.is_(None)):
            row.last_seen_at = utcnow() - timedelta(hours=2)  # default idle limit: 30 min
    assert "inactivity" in refused(c)


def test_session_refused_after_token_revocation(world):
    admin = world.server.client()
    issued = admin.post("/tokens", json={"role": "steering", "label": "to revoke"}).json()
    c = sign_in(world, issued["token"])
    assert c.get("/sites").status_code == 200
    assert admin.delete(f"/tokens/{issued['info']['id']}").status_code == 200
    assert "revoked" in refused(c)


def test_session_refused_after_role_change(world):
    admin = sign_in(world, world.tokens["admin"])
    created = world.server.client().post("/members", json={
        "name": "Rolf", "institution": "U", "email": "rolf@u.org", "role": "researcher"}).json()
    c = sign_in(world, created["token"])
    assert c.get("/proposals/new").status_code == 200
    r = admin.post(f"/admin/members/{created['member']['id']}/role",
                   data={"role": "steering", "csrf_token": csrf(admin)})
    assert r.status_code == 303
    assert "role" in refused(c)


def test_sign_in_link_works_once(world):
    admin = sign_in(world, world.tokens["admin"])
    token_id = world.spare_token()
    r = admin.post("/admin/signin-links", data={"token_id": token_id, "csrf_token": csrf(admin)})
    assert r.status_code == 201
    link = re.search(r'id="secret-link">([^<]+)<', r.text).group(1)
    path = httpx.URL(link).path
    for attempt in range(2):
        c = httpx.Client(base_url=world.server.url, timeout=60)
        page = c.get(path)
        pre = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        r = c.post(path, data={"csrf_token": pre})
        if attempt == 0:
            assert r.status_code == 303 and c.get("/").status_code == 200
        else:
            assert r.status_code == 401 and "already used" in r.text


def test_user_text_is_escaped(world):
    researcher = sign_in(world, world.tokens["r_nogrant"])
    r = world.call("r_nogrant", "POST", "/api/v1/proposals", {**REQUEST, "title": XSS})
    assert r.status_code == 201, r.text
    code = r.json()["code"]
    for c, path in ((researcher, f"/proposals/{code}"), (researcher, "/proposals"),
                    (sign_in(world, world.tokens["admin"]), "/audit")):
        html = c.get(path).text
        where = html.find("<script>document.title")
        assert where < 0, (path, html[max(0, where - 300):where + 80])
        assert "<img src=x" not in html, path
        assert "&lt;script&gt;" in html or "\\u003cscript\\u003e" in html, path
