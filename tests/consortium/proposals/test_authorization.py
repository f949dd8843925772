"""Grant boundaries and input validation of the proposal routes.

The exact allowed set of every route for every role (proposal routes included)
is asserted by ``tests/consortium/test_authorization_matrix.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
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
ANALYSIS_QUERY = {"analysis": "mixed_model", "measure": "networks:toy", "outcome": "none__none"}
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


def test_grant_cannot_be_widened_or_escaped(world):
    own = world.active_proposal("r_grant")
    r = world.call("r_grant", "PATCH", f"/proposals/{own}", {"columns": ["dx", "mean_fd"]})
    assert r.status_code == 409 and "never widened" in r.json()["error"]["message"]
    query = dict(ANALYSIS_QUERY)
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
