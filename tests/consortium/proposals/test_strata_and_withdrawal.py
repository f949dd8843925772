"""Issue #11 items 7 and 8 against a real server: chained differencing, exports after consent.

Item 7: four remote queries with overlapping age intervals, every pair differing by many
subjects, together isolated one NYU subject (real ABIDE data: NYU, KKI, STANFORD). Now
filters select whole strata cells only (the attack's intervals are refused), every cell
has >= min_cell_size subjects, and a researcher's released subject sets are compared
across all their proposals. The test decodes every released set from the database
(HMAC ids under the member's history key, recomputed from the bundles' subject keys)
and checks that every atom of the released sets -- and so every difference,
intersection or signed combination of them -- holds 0 or >= 10 subjects per site and
diagnosis.

Item 8: an export holding a site that opted out afterwards, or of a revoked or expired
grant, can no longer be downloaded; each refusal is audited.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from datetime import UTC, datetime

import pandas as pd
import pytest
import sqlalchemy as sa

from consortium.db.session import default_sqlite_url
from consortium.proposals.lifecycle import parse_code
from sites.bundle import read_bundle
from tests.helpers.bundles import build_abide_bundle

MIN = 10
DEFAULT_EDGES = [0, 12, 18, 30, 45, 65, 120]
QUERY = {
    "analysis": "mixed_model",
    "measure": "networks:ho111",
    "outcome": "unassigned__unassigned",
}


@pytest.fixture(scope="session")
def nyu_bundle(abide_dir, tmp_path_factory):
    """The real site agent on ABIDE NYU (160 subjects pass QC)."""
    folder = tmp_path_factory.mktemp("abide-nyu")
    bundle = build_abide_bundle(abide_dir, "NYU", folder / "NYU")
    return {"bundle": bundle, "public_key": folder / ".NYU-site" / "site_ed25519.pub.pem"}


def _engine(server):
    return sa.create_engine(server.db_url or default_sqlite_url(server.root))


def _member(c, name: str, institution: str, role: str) -> str:
    body = {"name": name, "institution": institution, "email": f"{name}@x.org", "role": role}
    r = c.post("/members", json=body)
    assert r.status_code == 201, r.text
    return r.json()["token"]


def _world(server, bundles: dict) -> dict:
    from tests.helpers.archives import tar_dir

    tokens = {}
    for site, files in bundles.items():
        tokens[site] = server.add_site(site, files["public_key"])
        tar = tar_dir(files["bundle"], server.root.parent / f"{site}.tar")
        assert server.upload(tokens[site], tar).status_code == 201
    with server.client() as admin:
        assert admin.post("/releases", json={"name": "r1"}).status_code == 201
        researcher = _member(admin, "ada", "Uni A", "researcher")
        chairs = [_member(admin, n, i, "steering") for n, i in [("bo", "B"), ("cy", "C")]]
    return {"server": server, "sites": tokens, "researcher": researcher, "chairs": chairs}


def _approved(world: dict) -> str:
    server = world["server"]
    with server.client(world["researcher"]) as r:
        p = r.post("/proposals", json={
            "title": "DMN in autism", "abstract": "a", "aims": "b", "analysis_plan": "c",
            "measures": ["networks:ho111"], "columns": ["dx", "age", "sex"],
            "release_name": "r1", "duration_months": 12,
        })  # fmt: skip
        assert p.status_code == 201, p.text
        code = p.json()["code"]
        assert r.post(f"/proposals/{code}/dua", json={"version": "1.0"}).is_success
        assert r.post(f"/proposals/{code}/submit").is_success
    for token in world["chairs"]:
        with server.client(token) as c:
            assert c.post(f"/proposals/{code}/votes", json={"decision": "approve"}).is_success
    for token in world["sites"].values():
        with server.client(token) as c:
            assert c.post(f"/proposals/{code}/consent", json={"decision": "consent"}).is_success
    return code


def _active(world: dict, strata: dict | None = None) -> str:
    code = _approved(world)
    body = {"strata": strata} if strata is not None else None
    with world["server"].client() as admin:
        r = admin.post(f"/proposals/{code}/activate", json=body)
        assert r.status_code == 200 and r.json()["status"] == "active", r.text
        assert admin.get(f"/proposals/{code}/grant").json()["strata"] == (
            strata or {"age": DEFAULT_EDGES}
        )
    return code


def _subjects(bundles: dict) -> pd.DataFrame:
    frames = []
    for site, files in bundles.items():
        b = read_bundle(files["bundle"])
        frames.append(b.subjects[["subject_key", "dx", "age"]].assign(site=site))
    return pd.concat(frames, ignore_index=True)


def _released_sets(server, subjects: pd.DataFrame, name: str) -> dict[int, set[int]]:
    """Every released set of researcher ``name``, decoded to row numbers of ``subjects``."""
    with _engine(server).connect() as conn:
        member, key = conn.execute(
            sa.text("SELECT id, history_key FROM members WHERE name = :n"), {"n": name}
        ).one()
        rows = conn.execute(
            sa.text("SELECT id, groups, n_subjects FROM released_sets WHERE member_id = :m"),
            {"m": member},
        ).all()
    ids = {
        hmac.new(bytes.fromhex(key), f"{s}/{k}".encode(), hashlib.sha256).hexdigest(): i
        for i, (s, k) in enumerate(zip(subjects["site"], subjects["subject_key"], strict=True))
    }
    out = {}
    for set_id, groups, n in rows:
        groups = groups if isinstance(groups, dict) else __import__("json").loads(groups)
        members = {ids[h] for hashes in groups.values() for h in hashes}
        assert len(members) == n
        for group, hashes in groups.items():  # the stored group is the subject's site/dx
            assert {f"{subjects.site[ids[h]]}/{subjects.dx[ids[h]]}" for h in hashes} == {group}
        out[set_id] = members
    return out


def _assert_no_small_combination(sets: dict[int, set[int]], subjects: pd.DataFrame) -> None:
    """Atoms (subjects in exactly the same released sets) hold 0 or >= MIN per site/dx;
    hence so does every set difference, intersection and symmetric difference."""
    lane = subjects["site"] + "/" + subjects["dx"]
    atoms: dict[tuple, int] = {}
    for i in set().union(*sets.values()):
        key = (lane[i], frozenset(s for s, members in sets.items() if i in members))
        atoms[key] = atoms.get(key, 0) + 1
    assert all(n >= MIN for n in atoms.values()), atoms
    for a, b in itertools.permutations(sets.values(), 2):
        for combo in (a - b, a ^ b, a & b):
            per_lane = lane[sorted(combo)].value_counts()
            assert (per_lane >= MIN).all(), per_lane


def _whole_cells(members: set[int], subjects: pd.DataFrame, edges: list[float]) -> None:
    """A released set holds all or none of every site x dx x age band cell."""
    band = pd.cut(subjects["age"], edges, right=False, labels=False)
    inside = subjects.index.isin(sorted(members))
    for _, rows in subjects.assign(band=band, inside=inside).groupby(["site", "dx", "band"]):
        assert rows["inside"].all() or not rows["inside"].any()


def _isolated(subjects: pd.DataFrame) -> tuple[int, float, float]:
    """An NYU subject alone (all sites) in an age gap [lo, hi) of its site/dx lane, with
    lo below every UM_2 age and hi above every KKI and STANFORD age, so that a filter at
    either cut keeps a second site whole (a mixed model needs two sites)."""
    ages = subjects["age"].to_numpy()
    um2_min = ages[subjects["site"] == "UM_2"].min()
    young_max = ages[subjects["site"].isin(["KKI", "STANFORD"])].max()
    for i in subjects.index[subjects["site"] == "NYU"]:
        lane = ages[(subjects["site"] == "NYU") & (subjects["dx"] == subjects["dx"][i])]
        below, above = lane[lane < ages[i]], lane[lane > ages[i]]
        if not len(below) or not len(above):
            continue
        lo, hi = (below.max() + ages[i]) / 2, (ages[i] + above.min()) / 2
        alone = ((ages >= lo) & (ages < hi)).sum() == 1
        if alone and lo <= um2_min and hi >= young_max:
            return int(i), float(round(lo, 4)), float(round(hi, 4))
    raise AssertionError("no isolated NYU age")


@pytest.mark.slow
def test_chained_differencing_is_impossible(server, abide_bundles, nyu_bundle):
    sites = ("KKI", "STANFORD", "UM_2")
    bundles = {s: abide_bundles[s] for s in sites} | {"NYU": nyu_bundle}
    world = _world(server, bundles)
    subjects = _subjects(bundles)
    victim, lo, hi = _isolated(subjects)
    a = float(subjects["age"][victim])
    age = subjects["age"]

    # The attack under the old pairwise rule: four overlapping age intervals.
    attack = [(6.0, a), (a, 40.0), (6.0, 40.0), (10.0, a)]
    sets = [set(subjects.index[age.between(x, y)]) for x, y in attack]
    assert all(len(p ^ q) >= 33 for p, q in itertools.combinations(sets, 2))
    assert (sets[0] | sets[1]) - (sets[0] ^ sets[1]) == {victim}  # Q1 + Q2 - Q3 = one subject

    code = _active(world)
    with server.client(world["researcher"]) as r:
        for x, y in attack:
            filters = [{"column": "age", "op": "ge", "value": x},
                       {"column": "age", "op": "le", "value": y}]  # fmt: skip
            res = r.post(f"/proposals/{code}/analyses", json={**QUERY, "filters": filters})
            assert res.status_code == 422, res.text
            message = res.json()["error"]["message"]
            assert "refused by rule strata" in message and "splits the band" in message
            assert "band edges 0, 12, 18, 30, 45, 65, 120" in message
        # The nearest whole-band versions: some released, all on whole cells.
        released = []
        for x, y in [(0, 18), (12, 30), (0, 30), (12, 45), (18, 45), (None, None)]:
            filters = [] if x is None else [{"column": "age", "op": "ge", "value": x},
                                            {"column": "age", "op": "le", "value": y}]  # fmt: skip
            res = r.post(f"/proposals/{code}/analyses", json={**QUERY, "filters": filters})
            assert res.status_code in (200, 422), res.text
            if res.status_code == 200:
                released.append(res.json()["result"])
            else:
                assert res.json()["error"]["code"] in ("disclosure_refused", "too_few_sites")
        # Wrong types and non-strata filters name the filter (item 9).
        for bad in ({"column": "age", "op": "ge", "value": "abc"},
                    {"column": "sex", "op": "ge", "value": 5},
                    {"column": "sex", "op": "eq", "value": "F"}):  # fmt: skip
            res = r.post(f"/proposals/{code}/analyses", json={**QUERY, "filters": [bad]})
            assert res.status_code == 422 and bad["column"] in res.text, res.text
    assert len(released) >= 3
    for result in released:
        assert all(n >= MIN for n in result["strata"]["cells"].values())
        assert all("=" in label for label in result["strata"]["suppressed"])
    stored = _released_sets(server, subjects, "ada")
    assert sorted(len(s) for s in stored.values()) == sorted(r["n_subjects"] for r in released)
    for members in stored.values():
        _whole_cells(members, subjects, DEFAULT_EDGES)
        assert victim not in members or len(members) >= MIN
    _assert_no_small_combination(stored, subjects)

    # Across two proposals whose committee chose different band edges around the victim:
    # each grant's cells are fine alone; the history across proposals stops the chain.
    # (A second researcher, so the chain starts from an empty history.)
    with server.client() as admin:
        world["researcher"] = _member(admin, "eve", "Uni E", "researcher")
    p1 = _active(world, {"age": [0, lo, 120]})
    p2 = _active(world, {"age": [0, hi, 120]})
    with server.client(world["researcher"]) as r:
        above_lo = r.post(f"/proposals/{p1}/analyses", json={
            **QUERY, "filters": [{"column": "age", "op": "ge", "value": lo}]})  # fmt: skip
        below_hi = r.post(f"/proposals/{p2}/analyses", json={
            **QUERY, "filters": [{"column": "age", "op": "le", "value": hi}]})  # fmt: skip
        everyone = r.post(f"/proposals/{p1}/analyses", json=QUERY)
    assert above_lo.status_code == 200, above_lo.text
    refused = below_hi.json()["error"]
    assert below_hi.status_code == 422 and "refused by rule differencing" in refused["message"]
    assert "NYU/" in refused["message"]
    assert everyone.status_code == 200, everyone.text
    a_set = set(subjects.index[age >= lo])
    b_set = set(subjects.index[age < hi])
    assert len(a_set ^ b_set) >= 33 and (a_set & b_set) == {victim}  # what was refused
    stored = _released_sets(server, subjects, "eve")
    assert len(stored) == 2
    _assert_no_small_combination(stored, subjects)
    with _engine(server).connect() as conn:
        rules = conn.execute(
            sa.text("SELECT rule FROM proposal_queries WHERE proposal_id = :p"),
            {"p": parse_code(p2)},
        ).scalars()
        assert list(rules) == ["differencing"]


def test_strata_definition_is_checked(server, abide_bundles):
    bundles = {s: abide_bundles[s] for s in ("KKI", "STANFORD")}
    world = _world(server, bundles)
    code = _approved(world)
    with server.client() as admin:
        for strata, needle in [
            ({"age": [30, 18]}, "strictly increasing"),
            ({"mean_fd": [0, 1]}, "mean_fd is not a column of the grant"),
            ({"site": ["KKI"]}, "always a cell dimension"),
            ({"sex": ["M", "M"]}, "listed twice"),
        ]:
            r = admin.post(f"/proposals/{code}/activate", json={"strata": strata})
            assert r.status_code == 422 and needle in r.text, r.text
        assert admin.get(f"/proposals/{code}").json()["status"] == "approved"


def _audited_refusals(server) -> list[tuple[str, dict]]:
    import json

    with _engine(server).connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT target, details FROM audit_log WHERE action = 'export.download.refused' "
                "ORDER BY seq"
            )
        ).all()
    return [(t, d if isinstance(d, dict) else json.loads(d)) for t, d in rows]


def test_exports_stop_with_consent_and_grant(server, abide_bundles):
    bundles = {s: abide_bundles[s] for s in ("KKI", "STANFORD")}
    world = _world(server, bundles)
    code = _active(world)
    with server.client(world["researcher"]) as r:
        before = r.post(f"/proposals/{code}/exports").json()
        assert before["manifest"]["sites"] == ["KKI", "STANFORD"]
        assert r.get(f"/proposals/{code}/exports/{before['id']}").status_code == 200
    with server.client(world["sites"]["KKI"]) as c:
        assert c.post(f"/proposals/{code}/consent", json={"decision": "opt_out"}).is_success
    with server.client(world["researcher"]) as r:
        gone = r.get(f"/proposals/{code}/exports/{before['id']}")
        assert gone.status_code == 410, gone.text
        error = gone.json()["error"]
        assert error["code"] == "export_withdrawn"
        assert "KKI" in error["message"] and "opted out" in error["message"]
        assert "Create a new export" in error["message"]
        after = r.post(f"/proposals/{code}/exports").json()
        assert after["manifest"]["sites"] == ["STANFORD"]
        assert r.get(f"/proposals/{code}/exports/{after['id']}").status_code == 200
    with server.client() as admin:
        assert admin.delete(f"/proposals/{code}/grant").is_success
    with server.client(world["researcher"]) as r:
        revoked = r.get(f"/proposals/{code}/exports/{after['id']}")
        assert revoked.status_code == 403 and revoked.json()["error"]["code"] == "grant_revoked"
        assert "can no longer be downloaded" in revoked.json()["error"]["message"]

    other = _active(world)
    with server.client(world["researcher"]) as r:
        made = r.post(f"/proposals/{other}/exports").json()
        assert made["manifest"]["sites"] == ["KKI", "STANFORD"]
    with _engine(server).begin() as conn:
        conn.execute(
            sa.text("UPDATE grants SET expires_at = :t WHERE proposal_id = :p"),
            {"t": datetime(2020, 1, 1, tzinfo=UTC), "p": parse_code(other)},
        )
    with server.client(world["researcher"]) as r:
        expired = r.get(f"/proposals/{other}/exports/{made['id']}")
        assert expired.status_code == 403 and expired.json()["error"]["code"] == "grant_expired"

    refusals = _audited_refusals(server)
    assert [(t, d["reason"]) for t, d in refusals] == [
        (f"proposal:{code}/export:{before['id']}", "export_withdrawn"),
        (f"proposal:{code}/export:{after['id']}", "grant_revoked"),
        (f"proposal:{other}/export:{made['id']}", "grant_expired"),
    ]
    assert refusals[0][1]["sites"] == ["KKI"]
    assert "intact" in server.cli("audit", "verify").stdout
