"""Issue 7 done-when: the whole proposal flow against a real server process."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import sqlalchemy as sa

from consortium.db.session import default_sqlite_url
from consortium.proposals.models import Grant
from sites.bundle import read_bundle
from tests.helpers.server import confed

OUTCOME = "unassigned__unassigned"  # ho111 has no network assignment


def _engine(server):
    return sa.create_engine(server.db_url or default_sqlite_url(server.root))


def _member(c, name, institution, role):
    r = c.post(
        "/members",
        json={"name": name, "institution": institution, "email": f"{name}@x.org", "role": role},
    )
    assert r.status_code == 201, r.text
    return r.json()["token"]


def test_proposal_flow(server, abide_bundles, tmp_path):
    site_tokens = {}
    for site, files in abide_bundles.items():
        site_tokens[site] = server.add_site(site, files["public_key"])
        assert server.upload(site_tokens[site], files["tar"]).status_code == 201
    with server.client() as admin:
        release = admin.post("/releases", json={"name": "r1"}).json()
        researcher = _member(admin, "ada", "Uni A", "researcher")
        chairs = [_member(admin, n, i, "steering") for n, i in [("bo", "Uni B"), ("cy", "Uni C")]]
        colleague = _member(admin, "di", "uni a ", "steering")  # proposer's institution

    with server.client(researcher) as r:
        p = r.post(
            "/proposals",
            json={
                "title": "Network means in autism",
                "abstract": "a",
                "aims": "b",
                "analysis_plan": "c",
                "measures": ["networks:ho111"],
                "columns": ["dx", "age", "sex"],
                "release_name": "r1",
                "duration_months": 12,
            },
        )
        assert p.status_code == 201, p.text
        code = p.json()["code"]
        assert p.json()["sites"] == ["KKI", "STANFORD", "UM_2"]
        assert r.post(f"/proposals/{code}/submit").json()["error"]["code"] == "dua_required"
        assert r.post(f"/proposals/{code}/dua", json={"version": "1.0"}).status_code == 200
        assert r.post(f"/proposals/{code}/submit").json()["status"] == "submitted"

    with server.client(colleague) as c:
        refused = c.post(f"/proposals/{code}/votes", json={"decision": "approve"})
        assert refused.status_code == 403 and "conflict of interest" in refused.text
    for token in chairs:
        with server.client(token) as c:
            v = c.post(f"/proposals/{code}/votes", json={"decision": "approve", "comment": "ok"})
            assert v.status_code == 201, v.text
    with server.client() as admin:
        assert admin.get(f"/proposals/{code}").json()["status"] == "approved"
        # activation waits for every site's answer while the window is open
        assert admin.post(f"/proposals/{code}/activate").status_code == 409

    # UM_2 opts out through `confed site proposals`; the others consent.
    token_file = tmp_path / "um2.token"
    token_file.write_text(site_tokens["UM_2"])
    site_cli = ["site", "proposals", "--config", str(abide_bundles["UM_2"]["config"])]
    site_cli += ["--url", server.url, "--token-file", str(token_file)]
    listing = confed(*site_cli).stdout
    assert code in listing and "no answer" in listing
    confed(*site_cli, "--opt-out", code, "--comment", "local ethics")
    for site in ("KKI", "STANFORD"):
        with server.client(site_tokens[site]) as c:
            assert c.post(f"/proposals/{code}/consent", json={"decision": "consent"}).is_success
    with server.client() as admin:
        assert admin.post(f"/proposals/{code}/activate").json()["status"] == "active"

    out = tmp_path / "export"
    researcher_file = tmp_path / "ada.token"
    researcher_file.write_text(researcher)
    export_args = ["--url", server.url, "--token-file", str(researcher_file)]
    confed("proposal", "export", code, "-o", str(out), *export_args)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["release"] == {"name": "r1", "hash": release["release_hash"]}
    assert manifest["recipient"]["name"] == "ada" and manifest["proposal"] == code
    assert manifest["data_use_terms"]["version"] == "1.0" and (out / "DATA_USE.txt").is_file()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["DATA_USE.txt", "manifest.json", "networks_ho111.csv", "subjects.csv"]
    )
    subjects = pd.read_csv(out / "subjects.csv")
    networks = pd.read_csv(out / "networks_ho111.csv")
    assert list(subjects.columns) == ["subject", "site", "dx", "age", "sex"]
    assert set(subjects["site"]) == {"KKI", "STANFORD"} and manifest["sites"] == ["KKI", "STANFORD"]

    # Independent check: re-key the bundles' own subject keys with the grant's key.
    with _engine(server).connect() as conn:
        key = conn.execute(sa.text("SELECT pseudonym_key FROM grants")).scalar_one()
    expected = []
    for site in ("KKI", "STANFORD"):
        b = read_bundle(abide_bundles[site]["bundle"])
        frame = b.subjects[["subject_key", "dx", "age", "sex"]].copy()
        frame[OUTCOME] = b.network_summaries("ho111")[OUTCOME].to_numpy()
        frame["site"] = site
        expected.append(frame)
    expected = pd.concat(expected, ignore_index=True)
    expected["subject"] = [
        hmac.new(bytes.fromhex(key), k.encode(), hashlib.sha256).hexdigest()
        for k in expected["subject_key"]
    ]
    assert not set(subjects["subject"]) & set(expected["subject_key"])  # re-keyed
    merged = subjects.merge(expected, on="subject", suffixes=("", "_ref"), validate="1:1")
    assert len(merged) == len(subjects) == len(expected) == 49
    for col in ("site", "dx", "sex"):
        assert (merged[col] == merged[f"{col}_ref"]).all()
    np.testing.assert_allclose(merged["age"], merged["age_ref"], rtol=1e-12)
    assert list(networks["subject"]) == list(subjects["subject"])
    nets = networks.merge(expected, on="subject")
    np.testing.assert_allclose(nets[f"{OUTCOME}_x"], nets[f"{OUTCOME}_y"], rtol=1e-6)

    # Remote mixed model on the grant's data, checked against statsmodels.
    query = {"analysis": "mixed_model", "measure": "networks:ho111", "outcome": OUTCOME}
    with server.client(researcher) as r:
        res = r.post(f"/proposals/{code}/analyses", json={**query, "covariates": ["age", "sex"]})
        assert res.status_code == 200, res.text
        result = res.json()["result"]
        # Default strata: age bands; KKI has 7 ASD subjects (one cell, below 10): suppressed.
        assert result["n_subjects"] == 42 and result["cells"]["site"] == {"KKI": 19, "STANFORD": 23}
        assert result["strata"]["suppressed"] == ["site=KKI, dx=ASD, age=[0, 120]"]
        assert set(result) == {
            "schema", "analysis", "measure", "outcome", "harmonize", "n_subjects", "cells",
            "strata", "coefficients", "variance_components", "residual_variance", "converged",
            "formula",
        }  # fmt: skip
        assert result["harmonize"] == "none"
        small = r.post(
            f"/proposals/{code}/analyses",
            json={**query, "filters": [{"column": "sex", "op": "eq", "value": "F"}]},
        )
        assert small.status_code == 422 and "rule strata" in small.json()["error"]["message"]
        assert "sex is not a stratum" in small.json()["error"]["message"]
        ages = np.sort(subjects["age"].to_numpy())
        cut = ages[3] if ages[3] > ages[2] else ages[5]
        near = r.post(
            f"/proposals/{code}/analyses",
            json={**query, "covariates": ["age", "sex"],
                  "filters": [{"column": "age", "op": "ge", "value": float(cut)}]},
        )  # fmt: skip
        assert near.status_code == 422 and "splits the band" in near.json()["error"]["message"]
        outside = r.post(f"/proposals/{code}/analyses", json={**query, "covariates": ["mean_fd"]})
        assert outside.status_code == 403

    import statsmodels.formula.api as smf

    analysed = expected[~((expected["site"] == "KKI") & (expected["dx"] == "ASD"))]
    ref_data = analysed.assign(case=(analysed["dx"] == "ASD").astype(float))
    ref = smf.mixedlm(f"{OUTCOME} ~ case + age + sex", ref_data, groups="site").fit(reml=True)
    fixed = {c["term"]: c for c in result["coefficients"]}
    assert abs(fixed["case"]["estimate"] - ref.params["case"]) < 1e-4 * (
        1 + abs(ref.params["case"])
    )
    assert abs(fixed["sex[M]"]["estimate"] - ref.params["sex[T.M]"]) < 1e-4

    # The audit log verifies and recorded the export, the download and the opt-out.
    assert "intact" in server.cli("audit", "verify").stdout
    with _engine(server).connect() as conn:
        actions = set(conn.execute(sa.text("SELECT action FROM audit_log")).scalars())
    wanted = {"proposal.export", "proposal.download", "proposal.opt_out", "proposal.approved"}
    wanted |= {"proposal.active", "proposal.analysis", "proposal.analysis.refused"}
    assert wanted <= actions

    # An expired grant stops at once, and the public register shows no private fields.
    with _engine(server).begin() as conn:
        conn.execute(sa.update(Grant).values(expires_at=datetime(2020, 1, 1, tzinfo=UTC)))
    with server.client(researcher) as r:
        gone = r.post(f"/proposals/{code}/exports")
        assert gone.status_code == 403 and gone.json()["error"]["code"] == "grant_expired"
        assert r.get(f"/proposals/{code}").json()["status"] == "expired"
    listing = confed("proposal", "list", "--url", server.url).stdout
    assert code in listing and "expired" in listing and "Uni A" in listing
    import httpx

    entry = httpx.get(f"{server.url}/api/v1/register").json()[0]
    assert set(entry) == {
        "code", "title", "institution", "status", "created_at", "submitted_at",
        "decided_at", "activated_at", "ended_at",
    }  # fmt: skip
