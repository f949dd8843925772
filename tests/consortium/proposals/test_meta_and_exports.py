"""Remote ``meta_analysis`` and the ``connectivity:`` / ``map:`` exports, on a real server.

Four synthetic sites (written by the site agent's bundle writer) are uploaded to a
coordinator process; S04 opts out of every proposal, so the grants reach S01-S03.
S02 has 14 cases and 10 controls, one control being the youngest subject of all
(age 5); a filter ``age >= 6``, which would leave a 9-subject site/diagnosis cell, is
refused since it splits the default age band [0, 12).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import tarfile

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from scipy import special

from consortium.analysis import random_effects
from consortium.db.session import default_sqlite_url
from consortium.errors import ConfedError
from consortium.proposals.export import unpack_verified
from consortium.proposals.lifecycle import parse_code
from sites.bundle import read_bundle
from tests.helpers.archives import tar_dir
from tests.helpers.bundles import synthetic_bundle
from tests.helpers.keys import make_keys
from tests.helpers.server import serving

SITES = ("S01", "S02", "S03", "S04")
GRANTED = ("S01", "S02", "S03")
N_VOXELS = 30


def _unbalance_s02(arrays: dict) -> None:
    subjects = arrays["subjects"]
    subjects.loc[12:13, "dx"] = "ASD"  # 14 ASD, 10 TDC
    subjects.loc[23, "age"] = 5.0  # a control younger than everyone else (ages 8-40)


def _member(c, name: str, institution: str, role: str) -> str:
    body = {"name": name, "institution": institution, "email": f"{name}@x.org", "role": role}
    r = c.post("/members", json=body)
    assert r.status_code == 201, r.text
    return r.json()["token"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A running coordinator with release r1 of four sites, a researcher and two chairs."""
    tmp = tmp_path_factory.mktemp("meta-exports")
    bundles, site_tokens, keys = {}, {}, {}
    with serving(tmp / "coord", None) as server:
        for i, site in enumerate(SITES):
            private, public = make_keys(tmp / "keys", site)
            keys[site] = private
            edit = _unbalance_s02 if site == "S02" else None
            bundles[site] = synthetic_bundle(
                tmp / "b" / site, site, private, seed=i, edit=edit, map_voxels=N_VOXELS
            )
            site_tokens[site] = server.add_site(site, public)
            r = server.upload(site_tokens[site], tar_dir(bundles[site], tmp / f"{site}.tar"))
            assert r.status_code == 201, r.text
        with server.client() as admin:
            assert admin.post("/releases", json={"name": "r1"}).status_code == 201
            researcher = _member(admin, "ada", "Uni A", "researcher")
            chairs = [_member(admin, n, i, "steering") for n, i in [("bo", "B"), ("cy", "C")]]
        yield {
            "server": server,
            "bundles": bundles,
            "site_tokens": site_tokens,
            "researcher": researcher,
            "chairs": chairs,
            "tmp": tmp,
            "keys": keys,  # private keys (federated site agents)
        }


def _active_proposal(world, measures: list[str], columns: list[str]) -> str:
    """Draft, accept the DUA, submit, approve, S04 opts out, the others consent, activate."""
    server = world["server"]
    with server.client(world["researcher"]) as r:
        p = r.post("/proposals", json={
            "title": f"study of {measures}", "abstract": "a", "aims": "b",
            "analysis_plan": "c", "measures": measures, "columns": columns,
            "release_name": "r1", "duration_months": 6,
        })  # fmt: skip
        assert p.status_code == 201, p.text
        code = p.json()["code"]
        assert r.post(f"/proposals/{code}/dua", json={"version": "1.0"}).status_code == 200
        assert r.post(f"/proposals/{code}/submit").status_code == 200
    for token in world["chairs"]:
        with server.client(token) as c:
            assert c.post(f"/proposals/{code}/votes", json={"decision": "approve"}).is_success
    for site, token in world["site_tokens"].items():
        decision = "opt_out" if site == "S04" else "consent"
        with server.client(token) as c:
            assert c.post(f"/proposals/{code}/consent", json={"decision": decision}).is_success
    with server.client() as admin:
        assert admin.post(f"/proposals/{code}/activate").json()["status"] == "active"
    return code


def _grant_key(server, code: str) -> str:
    engine = sa.create_engine(default_sqlite_url(server.root))
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT pseudonym_key FROM grants WHERE proposal_id = :p"),
            {"p": parse_code(code)},
        ).scalar_one()


def _hedges_g(case: np.ndarray, ctrl: np.ndarray) -> tuple[float, float]:
    """Hedges' g from the raw groups (pooled SD, exact J) and its unbiased variance."""
    n1, n2 = len(case), len(ctrl)
    m = n1 + n2 - 2
    sp = np.sqrt(((n1 - 1) * case.var(ddof=1) + (n2 - 1) * ctrl.var(ddof=1)) / m)
    j = special.gamma(m / 2) / (np.sqrt(m / 2) * special.gamma((m - 1) / 2))
    g = j * (case.mean() - ctrl.mean()) / sp
    return g, 1 / n1 + 1 / n2 + (1 - (m - 2) / (m * j**2)) * g**2


def test_remote_meta_analysis(world):
    server, bundles = world["server"], world["bundles"]
    code = _active_proposal(world, ["networks:toy"], ["dx", "age", "sex"])
    query = {"analysis": "meta_analysis", "measure": "networks:toy", "outcome": "none__none"}
    with server.client(world["researcher"]) as r:
        res = r.post(f"/proposals/{code}/analyses", json=query)
        assert res.status_code == 200, res.text
        result = res.json()["result"]
        female = [{"column": "sex", "op": "eq", "value": "F"}]
        by_sex = r.post(f"/proposals/{code}/analyses", json={**query, "filters": female})
        over_6 = [{"column": "age", "op": "ge", "value": 6}]
        by_age = r.post(f"/proposals/{code}/analyses", json={**query, "filters": over_6})

    # Independent computation from the bundles of the consenting sites.
    yi, vi, counts = [], [], {}
    for site in GRANTED:
        b = read_bundle(bundles[site])
        y = b.network_summaries("toy")["none__none"].to_numpy(dtype=float)
        dx = b.subjects["dx"].to_numpy()
        g, v = _hedges_g(y[dx == "ASD"], y[dx == "TDC"])
        yi.append(g)
        vi.append(v)
        counts[site] = len(y)
        assert result["sites"][site]["g"] == pytest.approx(g, rel=1e-9, abs=1e-12)
        assert result["sites"][site]["vi"] == pytest.approx(v, rel=1e-9)
    assert set(result["sites"]) == set(GRANTED)  # S04 opted out
    assert result["n_subjects"] == 72 and result["cells"]["site"] == counts
    assert result["cells"]["dx"] == {"ASD": 38, "TDC": 34}
    ref = random_effects(np.array(yi), np.array(vi)).as_dict()
    pooled = result["pooled"]
    # schema confed.analysis/2 vocabulary: ci = [low, high], p (library: ci_low/ci_high, pvalue)
    ours = {**pooled, "ci_low": pooled["ci"][0], "ci_high": pooled["ci"][1], "pvalue": pooled["p"]}
    for key in ("estimate", "se", "ci_low", "ci_high", "pvalue", "tau2", "q", "i2", "k"):
        assert ours[key] == pytest.approx(ref[key], rel=1e-7, abs=1e-10), key
    assert "weights" not in pooled  # aggregate only

    for refused in (by_sex, by_age):
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["code"] == "disclosure_refused"
        assert "refused by rule strata" in error["message"]
    # Filters select whole cells of the grant's strata (default: age bands) only: sex is
    # no stratum, and age >= 6 would split the band [0, 12) (dropping S02's 5-year-old).
    assert "sex is not a stratum" in by_sex.json()["error"]["message"]
    assert "splits the band [0, 12)" in by_age.json()["error"]["message"]
    engine = sa.create_engine(default_sqlite_url(server.root))
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT outcome, rule FROM proposal_queries WHERE proposal_id = :p "
                "ORDER BY created_at, id"
            ),
            {"p": parse_code(code)},
        ).all()
    assert [tuple(r) for r in rows] == [
        ("released", None),
        ("refused", "strata"),
        ("refused", "strata"),
    ]


@pytest.mark.parametrize("measure", ["connectivity:toy", "map:alff"])
def test_export_of_one_measure(world, measure, tmp_path):
    server, bundles = world["server"], world["bundles"]
    code = _active_proposal(world, [measure], ["dx"])
    with server.client(world["researcher"]) as r:
        made = r.post(f"/proposals/{code}/exports")
        assert made.status_code == 201, made.text
        made = made.json()
        download = r.get(f"/proposals/{code}/exports/{made['id']}")
        assert download.status_code == 200
    archive = download.content
    assert hashlib.sha256(archive).hexdigest() == made["archive_sha256"]
    assert download.headers["X-Content-SHA256"] == made["archive_sha256"]

    kind, name = measure.split(":")
    data_files = {"subjects.csv", "DATA_USE.txt", f"{kind}_{name}.npy"}
    if kind == "map":
        data_files.add(f"map_{name}_mask.nii.gz")
    if kind == "connectivity":
        data_files.add(f"atlas_{name}.tsv")  # the release's definition of the atlas
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = tar.getmembers()
        assert all(m.isfile() for m in members)
        tops = {m.name.split("/")[0] for m in members}
        assert len(tops) == 1
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in members}
    assert set(files) == data_files | {"manifest.json"}  # nothing else, no networks table

    manifest = json.loads(files["manifest.json"])
    assert manifest == made["manifest"]
    assert set(manifest["files"]) == data_files
    for fname, entry in manifest["files"].items():
        assert hashlib.sha256(files[fname]).hexdigest() == entry["sha256"], fname
        assert len(files[fname]) == entry["size"]
    assert manifest["measures"] == [measure] and manifest["columns"] == ["dx"]
    assert manifest["sites"] == list(GRANTED) and manifest["n_subjects"] == 72

    subjects = pd.read_csv(io.BytesIO(files["subjects.csv"]))
    assert list(subjects.columns) == ["subject", "site", "dx"]
    values = np.load(io.BytesIO(files[f"{kind}_{name}.npy"]))
    assert values.dtype == np.float32 and values.shape[0] == len(subjects) == 72

    # Re-key the bundles' own subject keys with the grant's key; rows must match exactly.
    key = bytes.fromhex(_grant_key(server, code))
    expected = {}
    for site in GRANTED:
        b = read_bundle(bundles[site])
        rows = b.connectivity("toy") if kind == "connectivity" else b.maps(name)[1]
        for k, dx, row in zip(b.subjects["subject_key"], b.subjects["dx"], rows, strict=True):
            expected[hmac.new(key, k.encode(), hashlib.sha256).hexdigest()] = (site, dx, row)
        assert not set(subjects["subject"]) & set(b.subjects["subject_key"])  # re-keyed
    assert set(subjects["subject"]) == set(expected)
    for i, (subject, site, dx) in enumerate(subjects.itertuples(index=False)):
        assert (site, dx) == expected[subject][:2]
        np.testing.assert_array_equal(values[i], np.asarray(expected[subject][2], np.float32))
    if kind == "map":
        assert values.shape[1] == N_VOXELS
        path = tmp_path / "mask.nii.gz"
        path.write_bytes(files[f"map_{name}_mask.nii.gz"])
        ref_mask = read_bundle(bundles["S01"]).maps(name)[0]
        np.testing.assert_array_equal(nib.load(path).get_fdata(), ref_mask.get_fdata())
        np.testing.assert_array_equal(nib.load(path).affine, ref_mask.affine)

    # The recipient's verifier accepts the archive and rejects a changed byte.
    tar_path = tmp_path / "export.tar"
    tar_path.write_bytes(archive)
    assert unpack_verified(tar_path, tmp_path / "ok") == manifest
    top = tops.pop()
    spoiled = tmp_path / "spoiled.tar"
    with tarfile.open(spoiled, "w") as out:
        for fname, content in files.items():
            if fname == "subjects.csv":
                content = content.replace(b"TDC", b"ASD", 1)
            info = tarfile.TarInfo(f"{top}/{fname}")
            info.size = len(content)
            out.addfile(info, io.BytesIO(content))
    with pytest.raises(ConfedError, match="subjects.csv checksum differs"):
        unpack_verified(spoiled, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
