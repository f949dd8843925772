"""The site agent on real ABIDE PCP sites, checked against independent numpy code."""

from __future__ import annotations

import hashlib
import hmac
from itertools import combinations_with_replacement
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sites.bundle import read_bundle
from tests.helpers.bundles import build_abide_bundle
from tests.helpers.keys import make_site

SITES = {"NYU": 14, "KKI": 10, "CALTECH": 6}
NETWORKS = ["frontal", "temporal", "posterior", "deep"]


def _network_of(roi: int) -> str:
    return NETWORKS[min((roi - 1) // 30, 3)]


@pytest.fixture(scope="module")
def ho_atlas_tsv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("atlas") / "ho111net.tsv"
    rows = [f"{i}\tHO{i}\t{_network_of(i)}" for i in range(1, 112)]
    path.write_text("index\tlabel\tnetwork\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def bundles(abide_dir, ho_atlas_tsv, tmp_path_factory):
    root = tmp_path_factory.mktemp("abide")
    out = {}
    for site, n in SITES.items():
        keys = make_site(root, site)
        path = build_abide_bundle(
            abide_dir,
            site,
            root / f"{site}-bundle",
            max_subjects=n,
            keys=keys,
            atlas=str(ho_atlas_tsv),
        )
        out[site] = (read_bundle(path), keys)
    return out


def _expected(abide_dir: Path, site: str, n: int, secret: bytes) -> pd.DataFrame:
    """Independent reading of the site's files: QC decision and FC per subject."""
    table = pd.read_csv(abide_dir / site / "participants.csv", dtype={"FILE_ID": str}).head(n)
    rows = []
    for _, row in table.iterrows():
        ts = np.loadtxt(abide_dir / site / f"{row.FILE_ID}_rois_ho.1D.gz")
        key = hmac.new(secret, f"{site}:{row.FILE_ID}".encode(), hashlib.sha256).hexdigest()
        flat = ts.std(axis=0) == 0
        included = (not flat.any()) and row.func_mean_fd <= 0.2 and len(ts) >= 50
        included = included and 5 <= row.AGE_AT_SCAN <= 100
        rows.append({"key": key, "ts": ts, "included": included, "row": row, "flat": flat})
    return pd.DataFrame(rows)


def test_abide_sites_fc_networks_qc(bundles, abide_dir, ho_atlas_tsv):
    total_included = 0
    for site, n in SITES.items():
        bundle, keys = bundles[site]
        secret = bytes.fromhex(keys.secret_path.read_text().strip())
        expected = _expected(abide_dir, site, n, secret)

        # QC: every subject listed, the same decisions, reasons recorded.
        qc = bundle.qc.set_index("subject_key")
        assert sorted(qc.index) == sorted(expected["key"])
        for _, e in expected.iterrows():
            assert bool(qc.at[e.key, "included"]) == e.included, (site, e.row.FILE_ID)
            codes = qc.at[e.key, "reason_codes"].split(";")
            if e.flat.any():
                assert "zero_variance_roi" in codes
                reasons = bundle.qc_reasons
                mine = (reasons["subject_key"] == e.key) & (reasons["code"] == "zero_variance_roi")
                flat_rois = reasons.loc[mine, "value"]
                assert sorted(flat_rois) == list(np.flatnonzero(e.flat) + 1.0)
            if e.row.func_mean_fd > 0.2:
                assert "head_motion" in codes
        assert bundle.manifest["counts"]["included"] == int(expected["included"].sum())

        # Subjects: order of connectivity rows, canonical values.
        subjects = bundle.subjects
        inc = expected[expected["included"]].set_index("key")
        assert sorted(subjects["subject_key"]) == sorted(inc.index)
        fc = bundle.connectivity("ho111net")
        nets = bundle.network_summaries("ho111net")
        assert fc.dtype == np.float32 and fc.shape == (len(inc), 111 * 110 // 2)
        rows, cols = np.triu_indices(111, k=1)
        for i, key in enumerate(subjects["subject_key"]):
            e = inc.loc[key]
            r = np.corrcoef(e.ts, rowvar=False)
            z = np.arctanh(r[rows, cols])
            np.testing.assert_allclose(fc[i], z, rtol=1e-5, atol=1e-5)
            assert subjects.at[i, "dx"] == {1: "ASD", 2: "TDC"}[e.row.DX_GROUP]
            assert subjects.at[i, "sex"] == {1: "M", 2: "F"}[e.row.SEX]
            assert subjects.at[i, "age"] == pytest.approx(e.row.AGE_AT_SCAN)
            assert subjects.at[i, "mean_fd"] == pytest.approx(e.row.func_mean_fd)
            # Network means by explicit loops over ROI pairs.
            zfull = np.arctanh(np.clip(r, -0.999999, 0.999999))
            for a, b in combinations_with_replacement(NETWORKS, 2):
                first, second = sorted([a, b])
                vals = [
                    zfull[p, q]
                    for p in range(111)
                    for q in range(p + 1, 111)
                    if sorted([_network_of(p + 1), _network_of(q + 1)]) == [first, second]
                ]
                assert nets.at[i, f"{first}__{second}"] == pytest.approx(np.mean(vals), abs=1e-5)
        total_included += len(inc)
        assert bundle.manifest["dx_labels"] == {"case": "ASD", "control": "TDC"}
        assert bundle.manifest["site_id"] == site
    assert total_included >= 15


def test_builtin_ho111_bundle_has_no_network_but_one_summary(abide_dir, tmp_path):
    path = build_abide_bundle(abide_dir, "STANFORD", tmp_path / "b", site_id="S09", max_subjects=5)
    bundle = read_bundle(path)
    assert bundle.site_id == "S09"
    nets = bundle.network_summaries("ho111")
    assert list(nets.columns) == ["unassigned__unassigned"]
    np.testing.assert_allclose(
        nets["unassigned__unassigned"], bundle.connectivity("ho111").mean(axis=1), rtol=1e-5
    )
    assert not any(c in bundle.subjects.columns for c in ("FILE_ID", "SUB_ID", "subject_id"))


def test_atlas_without_a_flat_roi_keeps_subjects(abide_dir, tmp_path):
    """The documented recipe: drop ho111 ROI 83 consortium-wide instead of the subjects.

    All of CALTECH's first 6 subjects have ROI 83 flat (two also have others); with
    an atlas of the 110 other ROIs and the column selection that skips it, exactly
    the subjects with another flat ROI are excluded for coverage, and FC equals
    numpy's on the 110 remaining columns.
    """
    keep = [i for i in range(1, 112) if i != 83]
    atlas = tmp_path / "ho110.tsv"
    atlas.write_text(
        "index\tlabel\tnetwork\n" + "\n".join(f"{i}\tHO{i}\tnone" for i in keep) + "\n"
    )
    full = build_abide_bundle(abide_dir, "CALTECH", tmp_path / "full", max_subjects=6)
    keys = make_site(tmp_path, "CALTECH")
    text = (tmp_path / ".full-site.toml").read_text()
    text = text.replace('atlas = "ho111"', f'atlas = "{atlas}"\ncolumns = "1-82,84-111"')
    for name in ("private_key", "public_key", "secret"):
        attr = {
            "private_key": keys.private_key_path,
            "public_key": keys.public_key_path,
            "secret": keys.secret_path,
        }[name]
        text = "\n".join(
            f'{name} = "{attr}"' if line.startswith(f"{name} =") else line
            for line in text.splitlines()
        )
    config = tmp_path / "ho110-site.toml"
    config.write_text(text)
    from sites.agent import compute
    from sites.config import load_config

    subjects = pd.read_csv(abide_dir / "CALTECH" / "participants.csv", dtype=str)
    ids = subjects["FILE_ID"].head(6).tolist()
    dropped = compute(load_config(config), tmp_path / "ho110", subjects=ids, progress=False)

    n_full = len(read_bundle(full).subjects)
    bundle = read_bundle(dropped)
    assert len(bundle.subjects) > n_full
    secret = bytes.fromhex(keys.secret_path.read_text().strip())
    by_key = {
        hmac.new(secret, f"CALTECH:{sid}".encode(), hashlib.sha256).hexdigest(): sid for sid in ids
    }
    site_dir = abide_dir / "CALTECH"
    flat_elsewhere = set()
    for sid in ids:
        ts = np.loadtxt(site_dir / f"{sid}_rois_ho.1D.gz", comments="#")
        if (ts[:, [i - 1 for i in keep]].std(axis=0) == 0).any():
            flat_elsewhere.add(sid)
    coverage = bundle.qc[bundle.qc["reason_codes"].str.contains("zero_variance_roi")]
    assert {by_key[k] for k in coverage["subject_key"]} == flat_elsewhere
    edges = bundle.connectivity("ho110")
    assert edges.shape == (len(bundle.subjects), 110 * 109 // 2)
    first_key = bundle.subjects["subject_key"].iloc[0]
    sid = by_key.get(first_key)
    assert sid is not None, "pseudonym is not an HMAC of a known subject id"
    ts = np.loadtxt(site_dir / f"{sid}_rois_ho.1D.gz", comments="#")
    expected = np.arctanh(np.corrcoef(ts[:, [i - 1 for i in keep]].T)[np.triu_indices(110, 1)])
    np.testing.assert_allclose(edges[0], expected, atol=1e-5)
