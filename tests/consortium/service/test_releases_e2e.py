"""End to end: three ABIDE sites submit over HTTP, a release is frozen and reopened."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from sites.bundle import export_bundle, read_bundle
from tests.helpers.bundles import build_abide_bundle
from tests.helpers.keys import make_site
from tests.helpers.server import confed

ABIDE_SITES = {"S01": "KKI", "S02": "SDSU", "S03": "NYU"}


@pytest.fixture(scope="session")
def abide_bundles(tmp_path_factory, abide_dir):
    """Three real site-agent bundles from ABIDE (15 subjects each), built once."""
    folder = tmp_path_factory.mktemp("abide")
    out = {}
    for site_id, abide_site in ABIDE_SITES.items():
        files = make_site(folder, site_id)
        bundle = build_abide_bundle(
            abide_dir,
            abide_site,
            folder / f"{site_id}-bundle",
            site_id=site_id,
            max_subjects=15,
            keys=files,
        )
        out[site_id] = (files, bundle, export_bundle(bundle, folder / f"{site_id}.tar"))
    return out


def test_three_abide_sites_release(server, abide_bundles, tmp_path):
    from consortium.releases import open_release, release_hash

    for site_id, (files, bundle, tar) in abide_bundles.items():
        token = server.add_site(site_id, files.public_key_path)
        (tmp_path / f"{site_id}.token").write_text(token)
        toml = tmp_path / f"{site_id}.toml"
        toml.write_text(
            f'site_id = "{site_id}"\n[coordinator]\nurl = "{server.url}"\n'
            f'token_file = "{site_id}.token"\n'
        )
        # Site S01 submits the bundle directory, the others their exported tar.
        out = confed(
            "site", "submit", str(bundle if site_id == "S01" else tar), "--config", str(toml)
        ).stdout
        assert "accepted: submission" in out and f"site {site_id}" in out

    with server.client() as c:
        steering = c.post("/tokens", json={"role": "steering"}).json()["token"]
    with server.client(steering) as c:
        r = c.post("/releases", json={"name": "abide-r1"})
        assert r.status_code == 201, r.text
        rel = r.json()
        again = c.post("/releases", json={"name": "abide-r1"})
        assert again.status_code == 409, "releases are immutable"
        r2 = c.post("/releases", json={"name": "abide-r1-copy"}).json()

    # The release hash, recomputed from the original bundles' manifest bytes.
    hashes = {
        s: hashlib.sha256((b / "manifest.json").read_bytes()).hexdigest()
        for s, (_, b, _) in abide_bundles.items()
    }
    assert {m["site_id"]: m["bundle_hash"] for m in rel["members"]} == hashes
    assert rel["release_hash"] == release_hash(hashes.items(), [])
    assert r2["release_hash"] == rel["release_hash"], "same submissions, same hash"
    shown = json.loads(server.cli("release", "show", "abide-r1", "--json").stdout)
    assert shown["release_hash"] == rel["release_hash"]

    # Opening the release gives back exactly the sites' data, re-verified from the store.
    ds = open_release(server.root, "abide-r1", db_url=server.db_url)
    assert ds.release_hash == rel["release_hash"] and ds.sites == sorted(hashes)
    originals = [read_bundle(abide_bundles[s][1]) for s in sorted(hashes)]
    assert len(ds.subjects) == sum(len(b.subjects) for b in originals) > 20
    np.testing.assert_array_equal(
        ds.connectivity("ho111"), np.concatenate([b.connectivity("ho111") for b in originals])
    )
    assert ds.dx_labels == {"case": "ASD", "control": "TDC"}

    # Excluding a subject changes the hash and drops the subject's rows everywhere.
    key = ds.subjects["subject_key"].iloc[0]
    exclude = tmp_path / "exclude.txt"
    exclude.write_text(f"# withdrawn consent\n{key}\n")
    out = server.cli("release", "create", "abide-r2", "--exclude-subjects", str(exclude)).stdout
    rel2 = json.loads(server.cli("release", "show", "abide-r2", "--json").stdout)
    assert rel2["release_hash"] == release_hash(hashes.items(), [key]) != rel["release_hash"]
    assert "abide-r2" in out
    ds2 = open_release(server.root, "abide-r2", db_url=server.db_url)
    assert key not in set(ds2.subjects["subject_key"]) and len(ds2.subjects) == len(ds.subjects) - 1
    assert ds2.connectivity("ho111").shape[0] == len(ds2.subjects)
    assert ds2.qc.loc[ds2.qc["subject_key"] == key, "reason_codes"].item() == "excluded_by_release"
    assert ds2.qc_reasons.loc[ds2.qc_reasons["subject_key"] == key, "code"].tolist() == [
        "excluded_by_release"
    ]
    bad = tmp_path / "bad.txt"
    bad.write_text("f" * 64 + "\n")
    res = server.cli("release", "create", "abide-r3", "--exclude-subjects", str(bad), check=False)
    assert res.returncode == 1 and "not in any released submission" in res.stdout

    # A release of chosen sites only.
    out = server.cli("release", "create", "abide-two", "--sites", "S01,S03").stdout
    assert "S01" in out and "S03" in out and "S02" not in out
    res = server.cli("release", "create", "abide-x", "--sites", "S09", check=False)
    assert res.returncode == 1 and "site S09 not found" in res.stdout

    # Group minimum counts are recorded as flags, not refusals (ABIDE KKI: 2 ASD of 15).
    with server.client() as c:
        subs = {s["site_id"]: s for s in c.get("/submissions").json()}
    assert any(f.startswith("small_group:ASD=") for f in subs["S01"]["flags"])
    assert "audit log intact" in server.cli("audit", "verify").stdout


def test_supersession_keeps_old_versions(server, site_keys, tmp_path):
    from tests.helpers.archives import tar_dir
    from tests.helpers.bundles import synthetic_bundle

    token = server.add_site("S05", site_keys["S05"][1])
    tars = [
        tar_dir(
            synthetic_bundle(tmp_path / f"v{i}" / "S05", "S05", site_keys["S05"][0], seed=i),
            tmp_path / f"v{i}.tar",
        )
        for i in (1, 2)
    ]
    first = server.upload(token, tars[0]).json()["submission"]
    with server.client() as c:
        c.post("/releases", json={"name": "before"})
    second = server.upload(token, tars[1]).json()["submission"]
    with server.client() as c:
        old = c.get(f"/submissions/{first['id']}").json()
        assert old["superseded_by_id"] == second["id"]
        current = c.get("/submissions", params={"current": True}).json()
        assert [s["id"] for s in current] == [second["id"]]
        after = c.post("/releases", json={"name": "after"}).json()
        before = c.get("/releases/before").json()
        # Old versions stay retrievable, byte for byte.
        f = next(f for f in old["files"] if f["path"] == "subjects.parquet")
        r = c.get(f"/submissions/{first['id']}/files/subjects.parquet")
        assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == f["sha256"]
    assert before["members"][0]["submission_id"] == first["id"]
    assert after["members"][0]["submission_id"] == second["id"]
    # Re-uploading the old bundle does not make it current again.
    again = server.upload(token, tars[0])
    assert again.status_code == 200 and again.json()["submission"]["id"] == first["id"]
    with server.client(token) as c:
        assert c.get("/sites/S05/status").json()["current"]["id"] == second["id"]
        assert c.get(f"/submissions/{first['id']}/files/qc.parquet").status_code == 200
