"""`confed demo` end to end: a real coordinator process, real site processes, HTTP uploads."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from consortium.demo import DemoError, RealDataOptions, format_summary, run_demo
from consortium.releases import open_release
from sites.atlas import load_atlas
from sites.bundle import read_bundle
from tests.helpers.browser import (
    chromium_path,
    dump_dom,
    headless_command,
    publish_screenshot,
    take_screenshot,
)

SECTIONS = ("summary", "sample", "qc-exclusions", "mixed-model", "forest-plot",
            "network-matrix", "glass-brain", "voxel-map", "provenance")


def _key(site_dir: Path, site_id: str, subject: str) -> str:
    """The pseudonym of a subject, recomputed from the site's secret (HMAC-SHA256)."""
    secret = bytes.fromhex((site_dir / "keys" / "pseudonym.secret").read_text().strip())
    return hmac.new(secret, f"{site_id}:{subject}".encode(), hashlib.sha256).hexdigest()


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    return run_demo(out, n_sites=3, subjects_scale=0.08, seed=7, min_per_group=3,
                    progress=False)


@pytest.mark.slow
def test_small_demo_through_server_and_site_processes(small_demo) -> None:
    out, summary = small_demo.out, small_demo.summary
    assert summary["sites"] == 3 and len(summary["release"]["hash"]) == 64
    # What the coordinator released is exactly what the sites' bundles hold.
    dataset = open_release(out / "coordinator", "demo-1")
    bundles = [read_bundle(d / "bundle") for d in sorted((out / "sites").iterdir()) if d.is_dir()]
    assert sorted(dataset.sites) == sorted(b.site_id for b in bundles)
    assert dataset.n_subjects == sum(len(b.subjects) for b in bundles)
    assert summary["analysed"]["n"] == dataset.n_subjects
    # One subject, from its raw site file to the coordinator, checked with numpy.
    site_dir = out / "sites" / "S01"  # C-PAC .1D site
    truth = pd.read_csv(site_dir / "participants.csv")
    subject = str(truth["ID"].iloc[0])
    ts = np.loadtxt(site_dir / "timeseries" / f"{subject}_rois_dosenbach160.1D", comments="#")
    dmn = load_atlas("dosenbach160").dmn
    r = np.corrcoef(ts[:, dmn], rowvar=False)
    expected = np.arctanh(r[np.triu_indices(int(dmn.sum()), k=1)]).mean()
    row = np.flatnonzero(dataset.subjects["subject_key"] == _key(site_dir, "S01", subject))
    assert len(row) == 1
    got = dataset.network_summaries("dosenbach160")["dmn_restmeta"].to_numpy()[row[0]]
    assert got == pytest.approx(expected, abs=1e-4)
    # The analyses and the summary agree; the report has every main section.
    dmn_results = json.loads((out / "analysis" / "dmn" / "results.json").read_text())
    for harm in ("none", "combat"):
        assert summary["dmn"][harm]["d"] == dmn_results["dmn"]["models"][harm]["d"]
        low, high = summary["dmn"][harm]["ci"]
        assert low < summary["dmn"][harm]["d"] < high
    html = small_demo.report.read_text()
    for section in SECTIONS:
        assert f'id="{section}"' in html
    text = format_summary(summary)
    assert "planted effect on mean DMN FC: d = -0.200" in text and "report:" in text
    # Server stopped, audit chain intact.
    audit = subprocess.run([sys.executable, "-m", "consortium.cli.main", "coord", "audit",
                            "verify", "--root", str(out / "coordinator")],
                           capture_output=True, text=True)
    assert audit.returncode == 0, audit.stderr
    assert (out / "summary.json").is_file()


def test_refuses_foreign_output_folder(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("not a demo")
    with pytest.raises(DemoError, match="not empty"):
        run_demo(tmp_path, n_sites=1, progress=False)
    assert (tmp_path / "precious.txt").read_text() == "not a demo"


@pytest.mark.slow
def test_real_data_variant_on_two_abide_sites(abide_dir: Path, tmp_path: Path) -> None:
    options = RealDataOptions(sites=("NYU", "STANFORD"), max_subjects=6)
    result = run_demo(tmp_path / "out", data=abide_dir, real=options, min_per_group=3,
                      progress=False)
    summary = result.summary
    assert summary["mode"] == "real data" and summary["sites"] == 2
    assert summary["subjects_in_site_files"] == 24
    # QC exclusions recomputed with numpy: a constant ROI, mean FD > 0.2 mm, < 50 volumes.
    series, excluded = {}, 0
    for site in options.sites:
        table = pd.read_csv(abide_dir / site / "participants.csv", dtype={"FILE_ID": str})
        for _, row in table.groupby("DX_GROUP").head(6).iterrows():
            with gzip.open(abide_dir / site / f"{row.FILE_ID}_rois_ho.1D.gz", "rt") as fh:
                ts = np.loadtxt(fh, comments="#")
            bad = (ts.std(axis=0) == 0).any() or row.func_mean_fd > 0.2 or len(ts) < 50
            excluded += bool(bad)
            if not bad:
                series[(site, row.FILE_ID)] = ts
    assert summary["qc_excluded"] == excluded
    assert summary["analysed"]["n"] == 24 - excluded == len(series)
    assert set(summary["analyses"]) == {"edges"}
    dataset = open_release(result.out / "coordinator", "demo-1")
    assert dataset.dx_labels == {"case": "ASD", "control": "TDC"}
    # Every released subject's FC equals numpy's on the ABIDE file.
    keys = dataset.subjects["subject_key"].tolist()
    fc = dataset.connectivity("ho111")
    iu = np.triu_indices(111, k=1)
    for (site, subject), ts in series.items():
        row = keys.index(_key(result.out / "sites" / site, site, subject))
        expected = np.arctanh(np.corrcoef(ts, rowvar=False)[iu])
        np.testing.assert_allclose(fc[row], expected, atol=1e-4)
    assert 'id="summary"' in result.report.read_text()


@pytest.mark.browser
def test_report_renders_in_headless_chromium(small_demo, tmp_path: Path) -> None:
    browser = chromium_path()
    # A copy of the report with a probe that records, in the DOM, whether each
    # section is laid out and visible once the page has rendered.
    probe = ("<script>window.addEventListener('load', () => { for (const id of "
             f"{json.dumps(list(SECTIONS))}) {{ const el = document.getElementById(id); "
             "const s = el && getComputedStyle(el); const ok = el && el.offsetHeight > 0 && "
             "s.display !== 'none' && s.visibility !== 'hidden'; "
             "document.body.setAttribute('data-visible-' + id, ok ? 'yes' : 'no'); } });"
             "</script>")
    page = tmp_path / "report.html"
    page.write_text(small_demo.report.read_text().replace("</body>", probe + "</body>"))
    screenshot = tmp_path / "report.png"
    base = headless_command(browser, tmp_path / "profile")
    dom = dump_dom(base, page.as_uri())
    for section in SECTIONS:
        assert f'id="{section}"' in dom
        assert f'data-visible-{section}="yes"' in dom, section
    size = take_screenshot(base, page.as_uri(), screenshot)
    assert size == (1280, 2400) and screenshot.stat().st_size > 50_000  # not a blank page
    publish_screenshot(screenshot, "report.png")
