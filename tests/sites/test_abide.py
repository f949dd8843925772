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
from tests.factories import build_abide_bundle, make_site

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
            if e.flat.any():
                assert "zero variance" in qc.at[e.key, "reason"]
            if e.row.func_mean_fd > 0.2:
                assert "head motion" in qc.at[e.key, "reason"]
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
    assert list(nets.columns) == ["none__none"]
    np.testing.assert_allclose(
        nets["none__none"], bundle.connectivity("ho111").mean(axis=1), rtol=1e-5
    )
    assert not any(c in bundle.subjects.columns for c in ("FILE_ID", "SUB_ID", "subject_id"))
