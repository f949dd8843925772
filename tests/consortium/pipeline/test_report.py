"""render_report: one self-contained page with stable section ids, and the CLI."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from consortium.cli.main import app
from consortium.report import ReportError, render_report
from consortium.report.render import SECTION_IDS

# A 1x1 PNG, standing in for a figure the prediction engineer's code would write.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.sources, self.hrefs, self.sections = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
            if tag == "section":
                self.sections.append(attrs["id"])
        if "src" in attrs:
            self.sources.append(attrs["src"])
        if "href" in attrs:
            self.hrefs.append(attrs["href"])


def _parse(path):
    collector = _Collector()
    collector.feed(path.read_text())
    return collector


def test_full_report_is_self_contained(results, tmp_path):
    prediction = tmp_path / "prediction"
    prediction.mkdir()
    (prediction / "site_scores.png").write_bytes(PNG)
    (prediction / "prediction.json").write_text(json.dumps({
        "target": "dx", "schemes": {"leave_site_out": {"accuracy": 0.61, "auc": 0.66},
                                    "random_10fold": {"accuracy": 0.70, "auc": 0.75}},
        "per_site": [{"site": "SITE_A", "accuracy": 0.58}], "figure": "site_scores.png",
    }))
    html = render_report([results[k] for k in ("dmn", "networks", "edges", "voxels")]
                         + [prediction], tmp_path / "report.html")
    page = _parse(html)
    # Everything ran (dmn with ComBat: diagnostics; dmn and edges: sensitivity).
    assert page.sections == [h[1:] for h in page.hrefs] == list(SECTION_IDS)
    assert page.sources and all(src.startswith("data:image/png;base64,") for src in page.sources)
    assert all(h.startswith("#") for h in page.hrefs)
    text = html.read_text()
    assert not re.search(r"https?://", text)
    dmn = json.loads((results["dmn"] / "results.json").read_text())
    combat, none = dmn["dmn"]["models"]["combat"], dmn["dmn"]["models"]["none"]
    assert f"{combat['d']:.3f}" in text and f"{none['d']:.3f}" in text
    assert "ComBat: site location/scale with empirical Bayes (combat)" in text
    assert "no harmonization (none)" in text
    assert "random_10fold" in text and "0.610" in text
    # Figures embedded: forest, DMN ROIs, network matrix, edge blocks, strongest edges,
    # voxel map, the ComBat location/scale plot and the prediction figure.
    assert len(page.sources) == 8


def test_partial_report_shows_only_what_ran(results, tmp_path):
    html = render_report(results["voxels"], tmp_path / "report.html")
    page = _parse(html)
    expected = ["summary", "sample", "qc-exclusions", "voxel-map", "provenance"]
    assert [h[1:] for h in page.hrefs] == expected
    assert page.sections == expected
    # Sections that did not run leave no anchor; the summary names the kinds not run.
    text = html.read_text()
    assert not {"mixed-model", "forest-plot", "network-matrix", "glass-brain"} & set(page.ids)
    assert "Not run, so not shown: dmn, networks, edges" in text


def test_bad_inputs_name_the_file(results, tmp_path):
    with pytest.raises(ReportError, match="no results.json or prediction.json"):
        render_report([tmp_path], tmp_path / "r.html")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "results.json").write_text("{not json")
    with pytest.raises(ReportError, match="broken/results.json: cannot read JSON"):
        render_report([broken], tmp_path / "r.html")
    missing = tmp_path / "missing"
    missing.mkdir()
    doc = json.loads((results["dmn"] / "results.json").read_text())
    (missing / "results.json").write_text(json.dumps(doc))
    with pytest.raises(ReportError, match="missing/forest.png: figure listed"):
        render_report([missing], tmp_path / "r.html")
    doc["figures"] = {"forest": {"png": "../../etc/passwd.png"}}
    (missing / "results.json").write_text(json.dumps(doc))
    with pytest.raises(ReportError, match="leaves the results directory"):
        render_report([missing], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_cli_analyze_and_report(synthetic_bundles, tmp_path):
    runner = CliRunner()
    paths = [str(b.path) for b in synthetic_bundles]
    sources = [arg for path in paths for arg in ("--bundles", path)]
    args = ["analyze", "networks", "--harmonize", "none", "--quiet", *sources]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "net")])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "net" / "results.json").read_text())
    assert doc["kind"] == "networks" and doc["provenance"]["release_name"] is None
    result = runner.invoke(app, ["report", "--analysis", str(tmp_path / "net"), "-o",
                                 str(tmp_path / "report.html")])
    assert result.exit_code == 0, result.output
    assert 'id="network-matrix"' in (tmp_path / "report.html").read_text()
    # Bad input: a clear message and a non-zero exit.
    result = runner.invoke(app, ["analyze", "dmn", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "--release" in result.output
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "y"), "--contrast", "fedn",
                                 "--min-per-group", "50"])
    assert result.exit_code == 1 and "at least 2 sites" in result.output
    assert not (tmp_path / "y").exists()
    result = runner.invoke(app, ["report", "--analysis", str(tmp_path), "-o",
                                 str(tmp_path / "r2.html")])
    assert result.exit_code == 1 and "no results.json" in result.output
