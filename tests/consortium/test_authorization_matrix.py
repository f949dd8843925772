"""Authorization matrix over every route of the coordinator API and every role.

One real server process (``confed coord serve``) answers every call. Each route is
called by every role; "allowed" means any answer but 401 or 403, and a role outside
the allowed set must get exactly 401 (no valid token: revoked, unknown, anonymous)
or exactly 403 (a valid token of the wrong role or site). Besides the plain
call, every route is called

- with a body that fails validation (``{"bogus": 1}``, or bytes that are no tar):
  allowed roles must get the 4xx of validation, everyone else still 401/403, so a
  forbidden caller learns nothing from the schema check;
- with identifiers that do not exist: allowed roles get 404, and the roles that may
  never use the route get 401/403 without the lookup telling them anything.

A role that may use a route, but not on this resource (another site's submission,
another researcher's proposal), gets exactly the 404 of a resource that does not
exist (``HIDDEN``), so ids tell nobody what exists.

Routes whose answer depends on ownership (a proposal, a site) run against fresh
proposals and a second site, so one call's effect never decides another's answer.
``test_matrix_covers_every_route`` fails when the app has a route without an entry.
"""

from __future__ import annotations

import signal
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import update
from starlette.routing import Route

from consortium.api import API_PREFIX, create_app
from consortium.auth import hash_token, issue_token, revoke
from consortium.coordinator import Coordinator
from consortium.db.models import Submission, SubmissionFile, Token
from consortium.ingest import ingest_archive
from consortium.proposals import consent, lifecycle, review
from consortium.proposals.members import create_member
from consortium.proposals.models import Grant, Member
from consortium.proposals.settings import ProposalSettings
from consortium.registry import add_site
from consortium.releases import create_release
from consortium.settings import Settings
from tests.helpers.archives import tar_dir
from tests.helpers.bundles import synthetic_bundle
from tests.helpers.keys import make_keys
from tests.helpers.server import Server

NO_TOKEN = frozenset({"revoked", "unknown", "anonymous"})
ROLES = (
    "admin",
    "steering",
    "site",  # token of site S01
    "r_grant",  # researcher holding an active grant (on their own proposal)
    "r_nogrant",  # researcher without any grant
    "r_expired",  # researcher whose grant expired (on their own proposal)
    *sorted(NO_TOKEN),
)
ANYONE = frozenset(ROLES)
AUTHENTICATED = ANYONE - NO_TOKEN
RESEARCHERS = frozenset({"r_grant", "r_nogrant", "r_expired"})
OWNERS = frozenset({"r_grant", "r_expired"})
ADMIN = frozenset({"admin"})
COMMITTEE = frozenset({"admin", "steering"})
SITE_READERS = COMMITTEE | {"site"}

P = API_PREFIX
# (method, path) -> roles allowed for the plain call (own site S01, own fresh proposal)
MATRIX: dict[tuple[str, str], frozenset[str]] = {
    ("GET", f"{P}/openapi.json"): ANYONE,
    ("GET", f"{P}/docs"): ANYONE,
    ("GET", "/docs/oauth2-redirect"): ANYONE,
    ("GET", f"{P}/health"): ANYONE,
    ("GET", f"{P}/tokens/me"): AUTHENTICATED,
    ("POST", f"{P}/tokens"): ADMIN,
    ("GET", f"{P}/tokens"): ADMIN,
    ("DELETE", f"{P}/tokens/{{token_id}}"): ADMIN,
    ("POST", f"{P}/sites"): ADMIN,
    ("GET", f"{P}/sites"): COMMITTEE,
    ("GET", f"{P}/sites/{{site_id}}"): SITE_READERS,
    ("GET", f"{P}/sites/{{site_id}}/status"): SITE_READERS,
    ("POST", f"{P}/submissions"): frozenset({"site"}),
    ("GET", f"{P}/submissions"): SITE_READERS,
    ("GET", f"{P}/submissions/{{submission_id}}"): SITE_READERS,
    ("GET", f"{P}/submissions/{{submission_id}}/files/{{path:path}}"): SITE_READERS,
    ("POST", f"{P}/releases"): COMMITTEE,
    ("GET", f"{P}/releases"): COMMITTEE,
    ("GET", f"{P}/releases/{{name}}"): COMMITTEE,
    ("GET", f"{P}/audit"): ADMIN,
    ("GET", f"{P}/audit/verify"): ADMIN,
    ("GET", f"{P}/audit/key"): AUTHENTICATED,
    ("GET", f"{P}/audit/entries/{{seq}}/hash"): AUTHENTICATED,
    ("POST", f"{P}/analyses"): COMMITTEE,
    ("GET", f"{P}/analyses"): COMMITTEE,
    ("GET", f"{P}/analyses/{{job_id}}"): COMMITTEE,
    ("GET", f"{P}/analyses/{{job_id}}/report"): COMMITTEE,
    ("POST", f"{P}/members"): ADMIN,
    ("GET", f"{P}/members"): COMMITTEE,
    ("POST", f"{P}/members/{{member_id}}/tokens"): ADMIN,
    ("GET", f"{P}/register"): ANYONE,
    ("GET", f"{P}/proposals/terms"): AUTHENTICATED,
    ("POST", f"{P}/proposals"): RESEARCHERS,
    ("GET", f"{P}/proposals"): AUTHENTICATED,
    ("GET", f"{P}/proposals/{{code}}"): COMMITTEE | {"site"} | OWNERS,
    ("PATCH", f"{P}/proposals/{{code}}"): OWNERS,
    ("POST", f"{P}/proposals/{{code}}/dua"): OWNERS,
    ("POST", f"{P}/proposals/{{code}}/submit"): OWNERS,
    ("POST", f"{P}/proposals/{{code}}/review"): COMMITTEE,
    ("POST", f"{P}/proposals/{{code}}/votes"): frozenset({"steering"}),
    ("GET", f"{P}/proposals/{{code}}/votes"): COMMITTEE,
    ("POST", f"{P}/proposals/{{code}}/consent"): frozenset({"site"}),
    ("POST", f"{P}/proposals/{{code}}/activate"): COMMITTEE,
    ("POST", f"{P}/proposals/{{code}}/close"): ADMIN | OWNERS,
    ("GET", f"{P}/proposals/{{code}}/grant"): COMMITTEE | OWNERS,
    ("DELETE", f"{P}/proposals/{{code}}/grant"): ADMIN,
    ("POST", f"{P}/proposals/{{code}}/exports"): frozenset({"r_grant"}),
    ("GET", f"{P}/proposals/{{code}}/exports/{{export_id}}"): frozenset({"r_grant"}),
    ("POST", f"{P}/proposals/{{code}}/analyses"): frozenset({"r_grant"}),
    ("GET", f"{P}/federated/tasks"): frozenset({"site"}),
    ("POST", f"{P}/federated/tasks/{{task_id}}/result"): frozenset({"site"}),
    ("POST", f"{P}/federated/runs"): COMMITTEE,
    ("GET", f"{P}/federated/runs/{{run_id}}"): COMMITTEE,
}
# The same routes on the second site S02 (not the site token's own): committee only.
OTHER_SITE = {
    ("GET", f"{P}/sites/{{site_id}}"): COMMITTEE,
    ("GET", f"{P}/sites/{{site_id}}/status"): COMMITTEE,
    ("GET", f"{P}/submissions?site_id=S02"): COMMITTEE,
    ("GET", f"{P}/submissions/{{submission_id}}"): COMMITTEE,
    ("GET", f"{P}/submissions/{{submission_id}}/files/{{path:path}}"): COMMITTEE,
}
# Roles that get the 404 of a missing resource on a resource that is not theirs
# (their role may use the route): the others' proposal, the other site's submission.
NOT_OWNER = frozenset({"r_nogrant"})
HIDDEN: dict[tuple[str, str], frozenset[str]] = {
    ("GET", f"{P}/proposals/{{code}}"): NOT_OWNER,
    ("PATCH", f"{P}/proposals/{{code}}"): NOT_OWNER,
    ("POST", f"{P}/proposals/{{code}}/dua"): NOT_OWNER,
    ("POST", f"{P}/proposals/{{code}}/submit"): NOT_OWNER,
    ("POST", f"{P}/proposals/{{code}}/close"): NOT_OWNER,
    ("GET", f"{P}/proposals/{{code}}/grant"): NOT_OWNER,
    ("POST", f"{P}/proposals/{{code}}/exports"): NOT_OWNER,
    ("GET", f"{P}/proposals/{{code}}/exports/{{export_id}}"): NOT_OWNER,
    ("POST", f"{P}/proposals/{{code}}/analyses"): NOT_OWNER,
}
HIDDEN_OTHER_SITE = {
    ("GET", f"{P}/submissions/{{submission_id}}"): frozenset({"site"}),
    ("GET", f"{P}/submissions/{{submission_id}}/files/{{path:path}}"): frozenset({"site"}),
}
# Identifiers that do not exist: who may get as far as the lookup (and its 404).
# Roles missing here must be refused from their role alone, before any lookup.
MISSING = {
    ("GET", f"{P}/audit/entries/{{seq}}/hash"): AUTHENTICATED,
    ("DELETE", f"{P}/tokens/{{token_id}}"): ADMIN,
    ("GET", f"{P}/sites/{{site_id}}"): COMMITTEE,
    ("GET", f"{P}/sites/{{site_id}}/status"): COMMITTEE,
    ("GET", f"{P}/submissions/{{submission_id}}"): SITE_READERS,
    ("GET", f"{P}/submissions/{{submission_id}}/files/{{path:path}}"): SITE_READERS,
    ("GET", f"{P}/releases/{{name}}"): COMMITTEE,
    ("GET", f"{P}/analyses/{{job_id}}"): COMMITTEE,
    ("GET", f"{P}/analyses/{{job_id}}/report"): COMMITTEE,
    ("POST", f"{P}/members/{{member_id}}/tokens"): ADMIN,
    ("GET", f"{P}/proposals/{{code}}"): AUTHENTICATED,
    ("PATCH", f"{P}/proposals/{{code}}"): RESEARCHERS,
    ("POST", f"{P}/proposals/{{code}}/dua"): RESEARCHERS,
    ("POST", f"{P}/proposals/{{code}}/submit"): RESEARCHERS,
    ("POST", f"{P}/proposals/{{code}}/review"): COMMITTEE,
    ("POST", f"{P}/proposals/{{code}}/votes"): frozenset({"steering"}),
    ("GET", f"{P}/proposals/{{code}}/votes"): COMMITTEE,
    ("POST", f"{P}/proposals/{{code}}/consent"): frozenset({"site"}),
    ("POST", f"{P}/proposals/{{code}}/activate"): COMMITTEE,
    ("POST", f"{P}/proposals/{{code}}/close"): ADMIN | RESEARCHERS,
    ("GET", f"{P}/proposals/{{code}}/grant"): COMMITTEE | RESEARCHERS,
    ("DELETE", f"{P}/proposals/{{code}}/grant"): ADMIN,
    ("POST", f"{P}/proposals/{{code}}/exports"): RESEARCHERS,
    ("GET", f"{P}/proposals/{{code}}/exports/{{export_id}}"): RESEARCHERS,
    ("POST", f"{P}/proposals/{{code}}/analyses"): RESEARCHERS,
    ("POST", f"{P}/federated/tasks/{{task_id}}/result"): frozenset({"site"}),
    ("GET", f"{P}/federated/runs/{{run_id}}"): COMMITTEE,
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
BODIES = {
    ("POST", f"{P}/tokens"): {"role": "researcher", "label": "matrix"},
    ("POST", f"{P}/releases"): {"name": "matrix-release"},
    ("POST", f"{P}/analyses"): {"release": "no-such-release", "kind": "dmn"},
    ("POST", f"{P}/members"): {
        "name": "x",
        "institution": "y",
        "email": "x@y.z",
        "role": "researcher",
    },
    ("POST", f"{P}/proposals"): REQUEST,
    ("PATCH", f"{P}/proposals/{{code}}"): {"title": "A wider title"},
    ("POST", f"{P}/proposals/{{code}}/dua"): {"version": "1.0"},
    ("POST", f"{P}/proposals/{{code}}/votes"): {"decision": "approve"},
    ("POST", f"{P}/proposals/{{code}}/consent"): {"decision": "consent"},
    ("POST", f"{P}/proposals/{{code}}/analyses"): {
        "analysis": "mixed_model",
        "measure": "networks:toy",
        "outcome": "none__none",
    },
    ("POST", f"{P}/federated/tasks/{{task_id}}/result"): {
        "schema": "confed.federated/1",
        "kind": "mixed_stats",
        "task_id": "no-such-task",
        "site": "S01",
        "status": "ok",
    },
    ("POST", f"{P}/federated/runs"): {"kind": "meta_summary", "params": {}, "sites": ["S01"]},
}
INVALID_BODY = {"bogus": 1}  # fails every JSON body schema above
NOT_A_TAR = b"this is not a tar archive"


@dataclass
class Case:
    method: str
    template: str  # a MATRIX key's path, maybe with a query string
    variant: str  # "plain", "other site", "invalid body", "missing"
    allowed: frozenset[str]
    body: object = None
    expect: set[int] = field(default_factory=set)  # what allowed roles must get, if fixed
    hidden: frozenset[str] = frozenset()  # roles that must get exactly 404 (not theirs)

    @property
    def route(self) -> tuple[str, str]:
        return self.method, self.template.split("?")[0]

    def __str__(self) -> str:
        return f"{self.method} {self.template.removeprefix(P)} [{self.variant}]"


def _cases() -> list[Case]:
    out = []
    for (method, path), allowed in MATRIX.items():
        body = BODIES.get((method, path))
        if (method, path) == ("POST", f"{P}/sites"):
            body = "site"  # filled in by the world: needs a real public key
        if (method, path) == ("POST", f"{P}/submissions"):
            body = "tar"
        hidden = HIDDEN.get((method, path), frozenset())
        out.append(Case(method, path, "plain", allowed, body, hidden=hidden))
        if body is not None:
            bad = NOT_A_TAR if body == "tar" else INVALID_BODY
            code = 400 if body == "tar" else 422
            out.append(Case(method, path, "invalid body", allowed, bad, {code}, hidden))
        if (method, path) in MISSING:
            out.append(Case(method, path, "missing", MISSING[method, path], body, {404}))
    for (method, path), allowed in OTHER_SITE.items():
        hidden = HIDDEN_OTHER_SITE.get((method, path), frozenset())
        out.append(Case(method, path, "other site", allowed, hidden=hidden))
    return out


CASES = _cases()


class World:
    """A coordinator with two sites, a release, members and one server process."""

    def __init__(self, tmp_path):
        self.server = Server(tmp_path / "coord", None)
        settings = Settings.load(self.server.root)
        settings.auth_fail_limit = 1_000_000  # every case calls with refused tokens
        settings.save()
        self.coord = Coordinator.open(self.server.root)
        self.tokens: dict[str, str | None] = {
            "admin": self.server.admin_token,
            "unknown": "cfd_" + uuid.uuid4().hex,
            "anonymous": None,
        }
        keys = tmp_path / "keys"
        self.new_site_pem = make_keys(keys, "S03")[1].read_text()
        with self.coord.db.session() as s:
            tars = {}
            for i, site in enumerate(("S01", "S02")):
                private, public = make_keys(keys, site)
                _, _, token = add_site(s, site, site, public.read_text(), "t")
                self.tokens.setdefault("site", token)  # S01's
                bundle = synthetic_bundle(tmp_path / "b" / site, site, private, seed=i)
                tars[site] = tar_dir(bundle, tmp_path / f"{site}.tar")
        self.tar = tars["S01"].read_bytes()
        for site, tar in tars.items():
            ingest_archive(self.coord, tar, site, "t")
        with self.coord.db.session() as s:
            create_release(s, "r1", "t")
            self.submissions, self.files = {}, {}
            for site in ("S01", "S02"):
                sub = s.query(Submission).filter_by(site_id=site).one()
                self.submissions[site] = sub.id
                self.files[site] = s.query(SubmissionFile).filter_by(submission_id=sub.id)[0].path
            self.members = {}
            for role, name, kind in [
                ("steering", "bo", "steering"),
                ("steering2", "cy", "steering"),
                ("r_grant", "ada", "researcher"),
                ("r_nogrant", "eve", "researcher"),
                ("r_expired", "fay", "researcher"),
                ("revoked", "gus", "researcher"),
            ]:
                m, tok = create_member(s, name, f"Uni {name}", f"{name}@x.org", kind, "t", 30)
                self.members[role], self.tokens[role] = m.id, tok
            token = s.query(Token).filter_by(token_hash=hash_token(self.tokens["revoked"])).one()
            revoke(s, token.id)
        self.server.start()
        self.http = httpx.Client(base_url=self.server.url, timeout=60)

    def close(self) -> None:
        self.http.close()
        self.server.kill(signal.SIGTERM)
        self.coord.close()

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

    def spare_token(self) -> int:
        with self.coord.db.session() as s:
            return issue_token(s, "researcher", label="to be revoked")[0].id

    def call(self, role: str, method: str, path: str, body=None) -> httpx.Response:
        token = self.tokens[role]
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if isinstance(body, bytes):
            headers["Content-Type"] = "application/x-tar"
            return self.http.request(method, path, headers=headers, content=body)
        return self.http.request(method, path, headers=headers, json=body)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("authz-matrix"))
    yield w
    w.close()


def _routes(routes, prefix: str = "") -> set[tuple[str, str]]:
    """(method, full path) of every route, also inside lazily included routers."""
    out = set()
    for route in routes:
        if hasattr(route, "original_router"):
            inner = prefix + route.include_context.prefix
            out |= _routes(route.original_router.routes, inner)
        elif isinstance(route, APIRoute | Route):
            out |= {(m, prefix + route.path) for m in route.methods - {"HEAD"}}
        else:
            raise AssertionError(f"route of unknown kind {route!r}: add it to the matrix")
    return out


def test_matrix_covers_every_route(world):
    routes = _routes(create_app(world.coord.settings, world.coord).routes)
    assert len(routes) > 40  # the walk found the included routers
    from tests.consortium.portal.matrix import PORTAL_MATRIX  # the portal's routes

    expected = set(MATRIX) | set(PORTAL_MATRIX)
    assert routes == expected, {
        "no matrix entry": sorted(routes - expected),
        "no such route": sorted(expected - routes),
    }
    keyed = {c.route for c in CASES if c.variant != "plain"}
    assert keyed <= set(MATRIX)


def _fill(world: World, case: Case, role: str, own: str, expired: str, extra: dict) -> str:
    missing = case.variant == "missing"
    site = "S02" if case.variant == "other site" else "S01"
    code = expired if role == "r_expired" else own
    values = {
        "code": "P9999" if missing else code,
        "site_id": "S99" if missing else site,
        "submission_id": 999_999 if missing else world.submissions[site],
        "path:path": world.files[site],
        "name": "no-such-release" if missing else "r1",
        "job_id": uuid.uuid4().hex,  # no job exists: allowed roles get 404
        "member_id": 999_999 if missing else world.members["r_nogrant"],
        "seq": 999_999 if missing else 1,
        "task_id": uuid.uuid4().hex,  # no such task: the site gets 404
        "run_id": 999_999,  # no such run: the committee gets 404
        **extra,
    }
    path = case.template
    for key, value in values.items():
        path = path.replace("{" + key + "}", str(value))
    return path


@pytest.mark.parametrize("case", CASES, ids=str)
def test_exact_allowed_set(world, case):
    own = world.active_proposal("r_grant") if "{code}" in case.template else ""
    expired = world.active_proposal("r_expired", expired=True) if own else ""
    extra = {}
    if "{token_id}" in case.template:
        extra["token_id"] = 999_999 if case.variant == "missing" else world.spare_token()
    if "{export_id}" in case.template:
        r = world.call("r_grant", "POST", f"{P}/proposals/{own}/exports")
        assert r.status_code == 201, r.text
        extra["export_id"] = 999_999 if case.variant == "missing" else r.json()["id"]
    body = case.body
    if body == "site":
        body = {"id": "S03", "name": "Site 3", "public_key_pem": world.new_site_pem}
    elif body == "tar":
        body = world.tar
    observed = {}
    for role in ROLES:
        path = _fill(world, case, role, own, expired, extra)
        observed[role] = world.call(role, case.method, path, body).status_code
    assert all(s < 500 for s in observed.values()), observed
    allowed = {role for role, s in observed.items() if s not in (401, 403)} - case.hidden
    assert allowed == case.allowed, observed
    for role in case.hidden:
        assert observed[role] == 404, observed
    for role in ANYONE - case.allowed - case.hidden:
        assert observed[role] == (401 if role in NO_TOKEN else 403), observed
    if case.expect:
        assert {observed[role] for role in case.allowed} <= case.expect, observed


def test_refusals_name_the_reason(world):
    """401 says why the token failed; 403 names the role; neither leaks the resource."""
    r = world.call("revoked", "GET", f"{P}/tokens/me")
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
    assert r.headers["WWW-Authenticate"] == "Bearer"
    r = world.call("unknown", "GET", f"{P}/tokens/me")
    assert r.json()["error"]["message"] == "unknown token"
    for sub in (world.submissions["S01"], 999_999):
        r = world.call("r_grant", "GET", f"{P}/submissions/{sub}")
        assert r.status_code == 403 and "researcher" in r.json()["error"]["message"], r.text
    r = world.call("steering", "PATCH", f"{P}/proposals/P9999", INVALID_BODY)
    assert r.status_code == 403 and "steering" in r.json()["error"]["message"], r.text


def test_grant_cannot_be_widened_or_escaped(world):
    own = world.active_proposal("r_grant")
    r = world.call("r_grant", "PATCH", f"{P}/proposals/{own}", {"columns": ["dx", "mean_fd"]})
    assert r.status_code == 409 and "never widened" in r.json()["error"]["message"]
    query = dict(BODIES[("POST", f"{P}/proposals/{{code}}/analyses")])
    r = world.call(
        "r_grant", "POST", f"{P}/proposals/{own}/analyses", {**query, "covariates": ["mean_fd"]}
    )
    assert r.status_code == 403 and "mean_fd" in r.json()["error"]["message"]
    r = world.call(
        "r_grant", "POST", f"{P}/proposals/{own}/analyses", {**query, "measure": "connectivity:toy"}
    )
    assert r.status_code == 403
    other = world.active_proposal("r_nogrant")
    for method, route in (("GET", ""), ("POST", "/exports")):
        # not theirs: the very answer of no such proposal (but for the id asked about)
        r = world.call("r_grant", method, f"{P}/proposals/{other}{route}")
        missing = world.call("r_grant", method, f"{P}/proposals/P9999{route}")
        assert r.status_code == missing.status_code == 404
        assert r.text.replace(other, "P9999") == missing.text


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
def test_proposal_input_validation(world, change, status, needle):
    r = world.call("r_nogrant", "POST", f"{P}/proposals", {**REQUEST, **change})
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]
