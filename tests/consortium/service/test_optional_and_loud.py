"""Issue #12: a site without motion estimates takes part; loud failures at submit and release.

Real ABIDE sites through a real coordinator (SQLite): one site's config has
``[motion] source = "none"``; its bundle is accepted, released and analysed,
and the analysis drops ``mean_fd`` for all sites with a note. ``confed site
submit`` explains non-transient failures at once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from sites.agent import compute
from sites.bundle import export_bundle
from sites.client import Connection, SubmitError, upload
from sites.config import load_config
from tests.helpers.archives import tar_dir
from tests.helpers.bundles import abide_config_text, synthetic_bundle
from tests.helpers.keys import make_site
from tests.helpers.server import confed, free_port

ABIDE_SITES = {"S01": "NYU", "S02": "UM_1", "S03": "USM"}
NO_MOTION = "S02"
PER_GROUP = 15

sqlite_only = pytest.mark.parametrize("db_url", [None], ids=["sqlite"])


def _subjects(site_dir: Path) -> list[str]:
    """Up to PER_GROUP low-motion subjects of each group (QC keeps them all)."""
    table = pd.read_csv(site_dir / "participants.csv", dtype={"FILE_ID": str})
    table = table[table["func_mean_fd"].astype(float) < 0.15]
    return table.groupby("DX_GROUP").head(PER_GROUP)["FILE_ID"].tolist()


def _no_motion(text: str) -> str:
    text = text.replace('func_mean_fd = "mean_fd"\n', "")
    return text.replace('source = "phenotype"', 'source = "none"')


@pytest.fixture(scope="module")
def abide_mixed(tmp_path_factory, abide_dir):
    """Three ABIDE bundles; site S02 has no motion source."""
    folder = tmp_path_factory.mktemp("abide-mixed")
    out = {}
    for site_id, abide_site in ABIDE_SITES.items():
        files = make_site(folder, site_id)
        site_dir = abide_dir / abide_site
        text = abide_config_text(site_id, site_dir, files)
        if site_id == NO_MOTION:
            text = _no_motion(text)
        config = folder / f"{site_id}.toml"
        config.write_text(text)
        bundle = compute(
            load_config(config),
            folder / f"{site_id}-bundle",
            subjects=_subjects(site_dir),
            progress=False,
        )
        out[site_id] = (files, bundle, export_bundle(bundle, folder / f"{site_id}.tar"))
    return out


@sqlite_only
def test_site_without_motion_takes_part(server, abide_mixed, tmp_path):
    subjects = pd.read_parquet(abide_mixed[NO_MOTION][1] / "subjects.parquet")
    assert subjects["mean_fd"].isna().all() and len(subjects) >= PER_GROUP
    for site_id, (files, _, tar) in abide_mixed.items():
        token = server.add_site(site_id, files.public_key_path)
        (tmp_path / f"{site_id}.token").write_text(token)
        toml = tmp_path / f"{site_id}.toml"
        toml.write_text(
            f'site_id = "{site_id}"\n[coordinator]\nurl = "{server.url}"\n'
            f'token_file = "{site_id}.token"\n'
        )
        out = confed("site", "submit", str(tar), "--config", str(toml)).stdout
        assert "accepted: submission" in out, out

    created = server.cli("release", "create", "r1").stdout
    n_total = 0
    for site_id, (_, bundle, _) in abide_mixed.items():
        counts = pd.read_parquet(bundle / "subjects.parquet")["dx"].value_counts()
        n_total += int(counts.sum())
        line = f"  {site_id}: {counts.sum()} subjects (ASD {counts['ASD']}, TDC {counts['TDC']})"
        assert line in created, created

    out_dir = tmp_path / "networks"
    confed(
        "analyze",
        "networks",
        "--release",
        "r1",
        "--root",
        str(server.root),
        "--out",
        str(out_dir),
        "--harmonize",
        "none",
        "--min-per-group",
        "5",
        "--quiet",
    )
    results = json.loads((out_dir / "results.json").read_text())
    design = results["design"]
    assert "mean_fd" not in design["covariates"] and "age" in design["covariates"]
    assert {"covariate": "mean_fd", "reason": "missing for a whole site", "sites": [NO_MOTION]} in (
        design["covariates_dropped"]
    )
    assert any("mean_fd" in n and NO_MOTION in n for n in design["notes"])
    assert design["n"] == n_total and sorted(design["sites"]) == sorted(ABIDE_SITES)


@sqlite_only
def test_release_create_flags_small_groups_and_superseded(server, site_keys, tmp_path):
    private, public = site_keys["S05"]
    token = server.add_site("S05", public)
    for n, seed in ((4, 1), (5, 2)):  # the second supersedes the first
        b = synthetic_bundle(
            tmp_path / f"b{seed}" / "S05", "S05", private, n_per_group=n, seed=seed
        )
        r = server.upload(token, tar_dir(b, tmp_path / f"b{seed}.tar"))
        assert r.status_code == 201, r.text
    out = server.cli("release", "create", "small").stdout
    assert "S05: 10 subjects (ASD 5, TDC 5)" in out, out
    assert "below the minimum of 10 per group: ASD 5" in out
    assert "1 earlier submission(s) superseded" in out


@sqlite_only
def test_zero_subject_bundle_refused_naming_site(server, site_keys, tmp_path):
    private, public = site_keys["S06"]
    token = server.add_site("S06", public)
    b = synthetic_bundle(tmp_path / "empty" / "S06", "S06", private, n_per_group=0)
    r = server.upload(token, tar_dir(b, tmp_path / "empty.tar"))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "no_subjects" and "site S06" in error["message"]


def _quick(conn: Connection, tar: Path) -> str:
    start = time.monotonic()
    with pytest.raises(SubmitError) as info:
        upload(conn, tar, retries=5, backoff=2.0, timeout=10)
    assert time.monotonic() - start < 5, "a non-transient failure must not be retried"
    return str(info.value)


def test_submit_explains_without_server(small_tars):
    tar = small_tars["S01"]
    assert "no http:// or https:// scheme" in _quick(Connection("127.0.0.1:8000", "t", "S01"), tar)
    port = free_port()  # closed: the coordinator may be restarting, so this one is retried
    with pytest.raises(SubmitError, match="after 2 attempts.*nothing listens"):
        upload(Connection(f"http://127.0.0.1:{port}", "t", "S01"), tar, retries=1, backoff=0.01)
    text = _quick(Connection("http://no-such-host.invalid:8000", "t", "S01"), tar)
    assert "unknown" in text and "no-such-host.invalid" in text


@sqlite_only
def test_submit_explains_against_real_server(server, small_tars, site_keys):
    tar = small_tars["S01"]
    token = server.add_site("S01", site_keys["S01"][1])
    https = server.url.replace("http://", "https://")
    assert "TLS" in _quick(Connection(https, token, "S01"), tar)
    text = _quick(Connection(f"{server.url}/api/v1", token, "S01"), tar)
    assert "404" in text and f"without it ({server.url})" in text
