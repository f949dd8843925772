"""Authorization matrix over every proposal, member and register route and every role.

Each route is called by every role against fresh proposals (so one call's effect
never decides another's answer); "allowed" means any answer but 401 or 403. A new
route under these routers without an entry in ``MATRIX`` fails the test.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import update

from consortium.api import create_app
from consortium.auth import hash_token, revoke
from consortium.coordinator import Coordinator
from consortium.db.models import Token
from consortium.ingest import ingest_archive
from consortium.proposals import consent, lifecycle, review
from consortium.proposals.members import create_member
from consortium.proposals.models import Grant, Member
from consortium.proposals.settings import ProposalSettings
from consortium.releases import create_release
from tests.consortium.service.bundles import make_keys, synthetic_bundle, tar_dir
from tests.consortium.service.conftest import Server

ROLES = ("admin", "steering", "site", "r_grant", "r_nogrant", "r_expired", "revoked", "anonymous")
AUTHENTICATED = set(ROLES) - {"revoked", "anonymous"}
RESEARCHERS = {"r_grant", "r_nogrant", "r_expired"}
OWNERS = {"r_grant", "r_expired"}
MATRIX: dict[tuple[str, str], set[str]] = {
    ("POST", "/members"): {"admin"},
    ("GET", "/members"): {"admin", "steering"},
    ("POST", "/members/{member_id}/tokens"): {"admin"},
    ("GET", "/register"): set(ROLES),
    ("GET", "/proposals/terms"): AUTHENTICATED,
    ("POST", "/proposals"): RESEARCHERS,
    ("GET", "/proposals"): AUTHENTICATED,
    ("GET", "/proposals/{code}"): {"admin", "steering", "site"} | OWNERS,
    ("PATCH", "/proposals/{code}"): OWNERS,
    ("POST", "/proposals/{code}/dua"): OWNERS,
    ("POST", "/proposals/{code}/submit"): OWNERS,
    ("POST", "/proposals/{code}/review"): {"admin", "steering"},
    ("POST", "/proposals/{code}/votes"): {"steering"},
    ("GET", "/proposals/{code}/votes"): {"admin", "steering"},
    ("POST", "/proposals/{code}/consent"): {"site"},
    ("POST", "/proposals/{code}/activate"): {"admin", "steering"},
    ("POST", "/proposals/{code}/close"): {"admin"} | OWNERS,
    ("GET", "/proposals/{code}/grant"): {"admin", "steering"} | OWNERS,
    ("DELETE", "/proposals/{code}/grant"): {"admin"},
    ("POST", "/proposals/{code}/exports"): {"r_grant"},
    ("GET", "/proposals/{code}/exports/{export_id}"): {"r_grant"},
    ("POST", "/proposals/{code}/analyses"): {"r_grant"},
}
BODIES = {
    ("POST", "/members"): {"name": "x", "institution": "y", "email": "x@y.z", "role": "researcher"},
    ("PATCH", "/proposals/{code}"): {"title": "A wider title"},
    ("POST", "/proposals/{code}/dua"): {"version": "1.0"},
    ("POST", "/proposals/{code}/votes"): {"decision": "approve"},
    ("POST", "/proposals/{code}/consent"): {"decision": "consent"},
    ("POST", "/proposals/{code}/analyses"): {
        "analysis": "mixed_model",
        "measure": "networks:toy",
        "outcome": "none__none",
    },
}
REQUEST = {
    "title": "Toy study",
    "abstract": "a",
    "aims": "b",
    "analysis_plan": "c",
    "measures": ["networks:toy"],
    "columns": ["dx", "age", "sex"],
    "sites": [],
    "release_name": "r1",
    "duration_months": 6,
}
MOUNTED = ("/members", "/proposals", "/register")


class World:
    def __init__(self, tmp_path):
        srv = Server(tmp_path / "coord", None)
        self.coord = Coordinator.open(srv.root)
        self.client = TestClient(create_app(self.coord.settings, self.coord))
        self.tokens = {"admin": srv.admin_token, "anonymous": None}
        self.site_tokens = {}
        with self.coord.db.session() as s:
            from consortium.registry import add_site

            for i, site in enumerate(("S01", "S02")):
                private, public = make_keys(tmp_path / "keys", site)
                _, _, self.site_tokens[site] = add_site(s, site, site, public.read_text(), "t")
                b = synthetic_bundle(tmp_path / "b" / site, site, private, seed=i)
                self.tars = getattr(self, "tars", {}) | {site: tar_dir(b, tmp_path / f"{site}.tar")}
        for site, tar in self.tars.items():
            ingest_archive(self.coord, tar, site, "t")
        with self.coord.db.session() as s:
            create_release(s, "r1", "t")
            self.members = {}
            for role, name, inst, kind in [
                ("steering", "bo", "Uni B", "steering"),
                ("steering2", "cy", "Uni C", "steering"),
                ("r_grant", "ada", "Uni A", "researcher"),
                ("r_nogrant", "eve", "Uni E", "researcher"),
                ("r_expired", "fay", "Uni F", "researcher"),
                ("revoked", "gus", "Uni G", "researcher"),
            ]:
                m, tok = create_member(s, name, inst, f"{name}@x.org", kind, "t", 30)
                self.members[role], self.tokens[role] = m.id, tok
            token = s.query(Token).filter_by(token_hash=hash_token(self.tokens["revoked"])).one()
            revoke(s, token.id)
        self.tokens["site"] = self.site_tokens["S01"]

    def active_proposal(self, owner: str, expired: bool = False) -> str:
        settings = ProposalSettings()
        with self.coord.db.session() as s:
            member = s.get(Member, self.members[owner])
            p = lifecycle.create_proposal(s, self.coord.store, member, "t", dict(REQUEST))
            lifecycle.accept_dua(s, p, member, "1.0", "t")
            lifecycle.submit(s, p, "t")
            for chair in ("steering", "steering2"):
                voter = s.get(Member, self.members[chair])
                review.cast_vote(s, settings, p, voter, "approve", "", "t")
            for site in p.sites:
                consent.record_consent(s, p, site, "consent", "", "t")
            consent.activate(s, p, "t")
            if expired:
                s.execute(
                    update(Grant)
                    .where(Grant.proposal_id == p.id)
                    .values(expires_at=datetime(2020, 1, 1, tzinfo=UTC))
                )
            return p.code

    def call(self, role: str, method: str, path: str, body=None):
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if self.tokens[role] else {}
        return self.client.request(method, f"/api/v1{path}", headers=headers, json=body)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("authz"))
    yield w
    w.coord.close()


def _api_routes(routes):
    """APIRoutes of the app, also inside included routers (FastAPI mounts them lazily)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):
            yield from _api_routes(route.original_router.routes)


def _routes(app) -> set[tuple[str, str]]:
    out = set()
    for route in _api_routes(app.routes):
        if True:
            path = route.path.removeprefix("/api/v1")
            if path.startswith(MOUNTED):
                out |= {(m, path) for m in route.methods}
    return out


def test_matrix_covers_every_route(world):
    assert _routes(world.client.app) == set(MATRIX)


@pytest.mark.parametrize("route", sorted(MATRIX), ids=lambda r: f"{r[0]} {r[1]}")
def test_exact_allowed_set(world, route):
    method, template = route
    own = world.active_proposal("r_grant")
    expired = world.active_proposal("r_expired", expired=True)
    export_id = "1"
    if "{export_id}" in template:
        r = world.call("r_grant", "POST", f"/proposals/{own}/exports")
        assert r.status_code == 201, r.text
        export_id = str(r.json()["id"])
    allowed = set()
    for role in ROLES:
        code = expired if role == "r_expired" else own
        path = template.format(code=code, member_id=world.members["r_nogrant"], export_id=export_id)
        r = world.call(role, method, path, BODIES.get(route))
        assert r.status_code < 500, (role, r.text)
        if r.status_code not in (401, 403):
            allowed.add(role)
        elif r.status_code == 401:
            assert role in ("revoked", "anonymous"), (role, r.text)
    assert allowed == MATRIX[route]


def test_grant_cannot_be_widened_or_escaped(world):
    own = world.active_proposal("r_grant")
    r = world.call("r_grant", "PATCH", f"/proposals/{own}", {"columns": ["dx", "mean_fd"]})
    assert r.status_code == 409 and "never widened" in r.json()["error"]["message"]
    query = dict(BODIES[("POST", "/proposals/{code}/analyses")])
    r = world.call(
        "r_grant", "POST", f"/proposals/{own}/analyses", {**query, "covariates": ["mean_fd"]}
    )
    assert r.status_code == 403 and "mean_fd" in r.json()["error"]["message"]
    r = world.call(
        "r_grant", "POST", f"/proposals/{own}/analyses", {**query, "measure": "connectivity:toy"}
    )
    assert r.status_code == 403
    other = world.active_proposal("r_nogrant")
    assert world.call("r_grant", "GET", f"/proposals/{other}").status_code == 403
    assert world.call("r_grant", "POST", f"/proposals/{other}/exports").status_code == 403


@pytest.mark.parametrize(
    ("change", "status", "needle"),
    [
        ({"title": "x"}, 422, "title"),
        ({"columns": ["dx", "shoe_size"]}, 422, "shoe_size"),
        ({"sites": ["S99"]}, 422, "S99"),
        ({"measures": ["networks:dosenbach160"]}, 422, "dosenbach160"),
        ({"release_name": "nope"}, 404, "nope"),
        ({"duration_months": 0}, 422, "duration_months"),
        ({"columns": ["dx", "dx"]}, 422, "twice"),
        ({"measures": [], "columns": []}, 422, "at least one"),
        ({"colour": "red"}, 422, "colour"),
        ({"title": "t" * 301}, 422, "title"),
    ],
)
def test_input_validation(world, change, status, needle):
    r = world.call("r_nogrant", "POST", "/proposals", {**REQUEST, **change})
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]
