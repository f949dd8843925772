"""Issue #11 (items 4, 9, 10) replayed against a real ``confed coord serve`` on loopback.

Unauthenticated large bodies, over-cap JSON, out-of-range ids, ill-typed filters,
denials in the audit log and the failed-login rate limit, non-sequential ids, the
404 for other parties' resources, owner-only file modes under umask 022, and the
``release create | head -1`` pipe.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from consortium.api import API_PREFIX, create_app
from sites.contract import ContractError, check_name
from tests.consortium.test_authorization_matrix import BODIES, World, _routes
from tests.helpers.server import Server

P = API_PREFIX
CONFED = Path(sys.executable).with_name("confed")
QUERY = BODIES[("POST", f"{P}/proposals/{{code}}/analyses")]


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))


def _stream(total: int, chunk: int = 1 << 20):
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        sent += n
        yield b"{" + b" " * (n - 1)


def _audit(server: Server) -> list[dict]:
    out, after = [], 0
    with server.client() as c:
        while True:
            page = c.get("/audit", params={"after": after, "limit": 1000}).json()
            out += page
            if len(page) < 1000:  # (each read appends its own audit.read entry)
                return out
            after = page[-1]["seq"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("trust"))
    yield w
    w.close()


# -- item 4: authenticate before reading; cap bodies ---------------------------------


@pytest.mark.parametrize("token", [None, "cfd_unknown"])
def test_large_unauthenticated_body_is_refused_unread(server, token):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    before = _rss_kib(server.proc.pid)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for declared in (False, True):
            size = 50 * 1024**2
            h = {**headers, "Content-Length": str(size)} if declared else headers
            start = time.monotonic()
            r = c.post(f"{P}/proposals", content=_stream(size), headers=h)
            elapsed = time.monotonic() - start
            assert r.status_code == 401, r.text
            assert elapsed < 2, f"took {elapsed:.1f} s"
    grown = (_rss_kib(server.proc.pid) - before) / 1024
    assert grown < 20, f"server RSS grew by {grown:.0f} MB"
    assert server.cli("audit", "verify").returncode == 0


def test_authenticated_json_over_the_cap_is_413(server):
    big = b'{"title": "' + b"x" * (2 * 1024**2) + b'"}'
    with server.client() as c:
        r = c.post("/proposals", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413, r.text
        assert "limit" in r.json()["error"]["message"]
        r = c.post("/releases", content=_stream(2 * 1024**2, 64 * 1024))  # chunked, no length
        assert r.status_code == 413, r.text
        assert c.post("/releases", json={"name": "no-submissions"}).status_code == 422


# -- item 9: ids, filters, names -------------------------------------------------------

INT_IDS = ("token_id", "submission_id", "member_id", "export_id")
BAD_INTS = (2**63, 2**64, 10**30, -1, 0)
BAD_STRINGS = ("P" + "9" * 30, "P99999999999999999999", "9" * 5000, "P-1", "x" * 5000)


def _fill(template: str, value: object) -> str:
    path = template.replace("{path:path}", "a.tsv")
    return re.sub(r"\{[a-z_]+\}", str(value), path)


def test_huge_ids_on_every_route_are_4xx(world):
    routes = _routes(create_app(world.coord.settings, world.coord).routes)
    # API routes (portal routes: tests/consortium/portal/test_portal_matrix.py)
    keyed = sorted((m, p) for m, p in routes if "{" in p and p.startswith("/api/"))
    assert len(keyed) > 20
    seen = {}
    for method, template in keyed:
        ints = any(f"{{{k}}}" in template for k in INT_IDS)
        for value in BAD_INTS + BAD_STRINGS:
            path = _fill(template, value)
            for role in ("admin", "site", "r_grant", "steering"):
                body = {} if method in ("POST", "PATCH") else None
                status = world.call(role, method, path, body).status_code
                seen[method, template, str(value)[:12], role] = status
                assert 400 <= status < 500, (method, path[:80], role, status)
                if ints and isinstance(value, int) and role == "admin" and "code" not in template:
                    assert status in (403, 404, 422), (method, path[:80], status)
    for after, status in ((2**64, 422), (-1, 422), (2**63 - 1, 200)):
        r = world.call("admin", "GET", f"{P}/audit?after={after}")
        assert r.status_code == status, r.text
    r = world.call("admin", "GET", f"{P}/submissions/{2**64}")
    assert "submission_id" in r.json()["error"]["message"]
    assert world.server.cli("audit", "verify").returncode == 0


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"filters": [{"column": "age", "op": "ge", "value": "abc"}]}, "age"),
        ({"filters": [{"column": "sex", "op": "ge", "value": 5}]}, "sex"),
        ({"filters": [{"column": "sex", "op": "eq", "value": 5}]}, "sex"),
        ({"filters": [{"column": "age", "op": "in", "value": ["old"]}]}, "age"),
        ({"filters": [{"column": "age", "op": "in", "value": 3}]}, "age"),
        ({"covariates": ["age", "age"]}, "age"),
    ],
)
def test_bad_filters_and_duplicate_covariates_are_422(world, change, needle):
    code = world.active_proposal("r_grant")
    r = world.call("r_grant", "POST", f"{P}/proposals/{code}/analyses", {**QUERY, **change})
    assert r.status_code == 422, r.text
    assert needle in r.json()["error"]["message"], r.text


def test_release_names_share_the_contract_rule(world):
    for name in ("../etc", "a" * 65, ".x", "a b"):
        with pytest.raises(ContractError) as rule:
            check_name(name, "release name")
        r = world.call("admin", "POST", f"{P}/releases", {"name": name})
        assert r.status_code == 422 and str(rule.value) in r.json()["error"]["message"], r.text
        cli = world.server.cli("release", "create", name, check=False)
        assert cli.returncode == 1 and str(rule.value) in cli.stdout, cli.stdout
    cli = world.server.cli("token", "issue", "researcher", "--label", "l" * 257, check=False)
    assert cli.returncode == 1 and "label" in cli.stdout
    cli = world.server.cli(
        "site", "add", "S/1", "--name", "x", "--public-key", "/dev/null", check=False
    )
    assert cli.returncode == 1 and "site id" in cli.stdout


# -- item 10: denials audited, rate limit, reads audited, ids, 404s, modes -------------


def test_denials_are_audited_and_guessing_is_rate_limited(server, site_keys):
    site_token = server.add_site("S01", site_keys["S01"][1])
    anon = httpx.Client(base_url=f"{server.url}{P}", timeout=30)
    assert anon.get("/tokens/me").status_code == 401
    with server.client(site_token) as c:
        assert c.get("/sites").status_code == 403
    with server.client("cfd_not-a-token") as c:
        assert c.get("/releases").status_code == 401
    entries = _audit(server)
    denied = [e for e in entries if e["action"] == "auth.denied"]
    assert {(e["actor"].split("/")[0], e["target"], e["details"]["status"]) for e in denied} >= {
        ("anonymous", f"{P}/tokens/me", 401),
        ("site:S01", f"{P}/sites", 403),
        ("anonymous", f"{P}/releases", 401),
    }
    assert all(e["details"]["client"] == "127.0.0.1" for e in denied)
    assert "cfd_not-a-token" not in str(entries) and site_token not in str(entries)
    statuses = [anon.get("/tokens/me").status_code for _ in range(12)]
    assert statuses[:7] == [401] * 7 and statuses[-1] == 429, statuses
    r = anon.get("/releases")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    with server.client() as c:  # a valid token from the same address is still served
        assert c.get("/tokens/me").status_code == 200
    # The portal's sign-in form shares the counter: a bad token there gets 429 now too,
    # while a valid token still signs in.
    portal = httpx.Client(base_url=server.url, timeout=30)
    portal.get("/signin")
    pre = portal.cookies["confed_presession"]
    r = portal.post("/signin", data={"token": "cfd_not-a-token", "csrf_token": pre})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    r = portal.post("/signin", data={"token": server.admin_token, "csrf_token": pre})
    assert r.status_code == 303, r.text
    assert any(e["action"] == "auth.rate_limited" for e in _audit(server))
    anon.close()
    portal.close()
    assert server.cli("audit", "verify").returncode == 0


def test_analysis_jobs_reads_are_audited(world):
    r = world.call("admin", "POST", f"{P}/analyses", {"release": "r1", "kind": "networks"})
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    assert world.call("admin", "GET", f"{P}/analyses").status_code == 200
    assert world.call("steering", "GET", f"{P}/analyses/{job}").status_code == 200
    actions = {(e["action"], e["target"]) for e in _audit(world.server)}
    assert ("analysis.list", "analyses") in actions
    assert ("analysis.read", f"analysis:{job}") in actions
    job_dir = world.server.root / "analyses" / job
    assert _mode(job_dir) == 0o700 and _mode(job_dir / "job.json") == 0o600


def test_ids_are_not_sequential(world):
    subs = sorted(world.submissions.values())
    codes = [world.active_proposal("r_grant") for _ in range(3)]
    props = sorted(int(c[1:]) for c in codes)
    tokens = sorted(world.spare_token() for _ in range(3))
    for ids in (subs, props, tokens):
        assert all(1 <= i < 2**31 for i in ids)
        gaps = {b - a for a, b in zip(ids, ids[1:], strict=False)}
        assert gaps != {1}, ids


def test_other_partys_resources_look_missing(world):
    other = world.submissions["S02"]
    missing = 999_999 if other != 999_999 else 999_998
    for tail in ("", f"/files/{world.files['S02']}"):
        mine = world.call("site", "GET", f"{P}/submissions/{other}{tail}")
        none = world.call("site", "GET", f"{P}/submissions/{missing}{tail}")
        assert mine.status_code == none.status_code == 404
        assert mine.text.replace(str(other), str(missing)) == none.text
    code = world.active_proposal("r_nogrant")
    r = world.call("r_grant", "GET", f"{P}/proposals/{code}")
    none = world.call("r_grant", "GET", f"{P}/proposals/P{missing}")
    assert r.status_code == none.status_code == 404
    assert r.text.replace(code[1:], str(missing)) == none.text
    # and an export of one's own grant is owner-only on disk
    own = world.active_proposal("r_grant")
    r = world.call("r_grant", "POST", f"{P}/proposals/{own}/exports")
    assert r.status_code == 201, r.text
    folder = world.server.root / "proposal_exports"
    assert _mode(folder) == 0o700 and _mode(folder / own) == 0o700
    assert all(_mode(p) == 0o600 for p in (folder / own).iterdir())
    assert world.server.cli("audit", "verify").returncode == 0


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_files_are_owner_only_under_umask_022(tmp_path, umask_022, site_keys, small_tars):
    server = Server(tmp_path / "coord", None).start()
    try:
        token = server.add_site("S01", site_keys["S01"][1])
        assert server.upload(token, small_tars["S01"]).status_code == 201
    finally:
        server.kill(signal.SIGTERM)
    root = server.root
    assert _mode(root) == 0o700
    private_files = [root / "coordinator.json", root / "coordinator.sqlite3"]
    private_files += [p for p in root.glob("coordinator.sqlite3-*")]
    for sub in ("objects", "bundles", "tmp", "keys"):
        if (root / sub).exists():
            assert _mode(root / sub) == 0o700, sub
            private_files += [p for p in (root / sub).rglob("*") if p.is_file()]
    objects = [p for p in (root / "objects").rglob("*") if p.is_file()]
    assert objects and all(_mode(p.parent) == 0o700 for p in objects)
    for path in private_files:
        assert _mode(path) & 0o077 == 0, (path, oct(_mode(path)))
    site = tmp_path / "site"
    site.mkdir()
    subprocess.run(
        [str(CONFED), "site", "init", "--site-id", "S07", "--out", str(site / "site.toml")],
        check=True,
        capture_output=True,
        preexec_fn=lambda: os.umask(0o022),
    )
    assert _mode(site / "keys") == 0o700
    for name in ("site_ed25519.pem", "pseudonym.secret"):
        assert _mode(site / "keys" / name) == 0o600
    bad = subprocess.run(
        [str(CONFED), "site", "init", "--site-id", "S" * 65, "--out", str(tmp_path / "x.toml")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "not a valid name" in bad.stdout + bad.stderr


def test_release_create_piped_to_head(tmp_path, site_keys, small_tars):
    server = Server(tmp_path / "coord", None)
    server.cli("site", "add", "S01", "--name", "one", "--public-key", str(site_keys["S01"][1]))
    server.cli("import", str(small_tars["S01"]))
    for n in range(3):
        name = f"piped-{n}"
        cmd = f"'{CONFED}' coord release create {name} --root '{server.root}' | head -1"
        out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True).stdout
        shown = server.cli("release", "show", name, "--json", check=False)
        if not out.strip():
            assert shown.returncode == 1, shown.stdout
            continue
        printed = re.search(r"hash ([0-9a-f]{64})", out).group(1)
        assert shown.returncode == 0, shown.stdout
        assert f'"release_hash": "{printed}"' in shown.stdout
    assert server.cli("audit", "verify").returncode == 0
