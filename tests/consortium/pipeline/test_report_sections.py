"""The report for its readers: plain headers, QC counts, atlas labels, harmonization
named on every figure, ComBat diagnostics and covariate sensitivity, kinds via the registry."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from consortium.analysis.data import harmonize_fitted
from consortium.analysis.design import build_design
from consortium.analysis.registry import register_kind, unregister_kind
from consortium.report import render_report
from consortium.report.common import qc_by_site_code
from consortium.report.sections import Section

JARGON = {"yi", "vi", "tau2", "q", "i2", "left_out"}


class _Tables(HTMLParser):
    """Visible header texts, table rows by table id, figures and their captions."""

    def __init__(self):
        super().__init__()
        self.headers, self.tables, self.figures, self.titles = [], {}, [], []
        self._cell = None
        self._table = None
        self._row = None
        self._figure = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = attrs.get("id") or attrs.get("class") or f"t{len(self.tables)}"
            self.tables.setdefault(self._table, [])
        elif tag == "tr":
            self._row = []
        elif tag in ("th", "td"):
            self._cell = [tag, ""]
        elif tag == "abbr":
            self.titles.append(attrs.get("title", ""))
        elif tag == "figure":
            self._figure = {"img": 0, "caption": ""}
        elif tag == "img" and self._figure is not None:
            self._figure["img"] += 1
        elif tag == "img":
            self.figures.append({"img": 1, "caption": ""})  # an image outside a figure

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self._cell is not None:
            kind, text = self._cell
            if kind == "th":
                self.headers.append(text.strip())
            if self._row is not None:
                self._row.append(text.strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "figure" and self._figure is not None:
            self.figures.append(self._figure)
            self._figure = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data
        if self._figure is not None:
            self._figure["caption"] += data


def _parse(path) -> _Tables:
    parser = _Tables()
    parser.feed(path.read_text())
    return parser


@pytest.fixture(scope="module")
def full_report(results, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    return render_report([results[k] for k in ("dmn", "networks", "edges", "voxels")], out)


def _results(directory) -> dict:
    return json.loads((directory / "results.json").read_text())


def test_headers_are_plain_language_with_terms_in_tooltips(full_report):
    page = _parse(full_report)
    assert page.headers and not JARGON & set(page.headers)
    for term in ("yi:", "vi:", "tau2", "i2", "left_out:", "q: Benjamini-Hochberg"):
        assert any(term in title for title in page.titles), term


def test_qc_table_counts_per_site_and_code_equal_the_dataset(full_report, dataset):
    rows = _parse(full_report).tables["qc-by-site-code"]
    shown = {(r[0], r[1]): int(r[4]) for r in rows[1:]}
    expected = dataset.qc_reasons.groupby(["site", "code"]).size()
    assert shown == {k: int(v) for k, v in expected.items()} and shown


def test_qc_summary_merges_fields_of_one_code():
    rows = [
        {"site": "B", "code": "missing_value", "field": "age", "meaning": "m", "n": 2},
        {"site": "B", "code": "missing_value", "field": "sex", "meaning": "m", "n": 1},
        {"site": "A", "code": "head_motion", "field": "mean_fd", "meaning": "h", "n": 4},
    ]
    assert qc_by_site_code(rows) == [
        {"site": "A", "code": "head_motion", "meaning": "h", "fields": "mean_fd", "n": 4},
        {"site": "B", "code": "missing_value", "meaning": "m", "fields": "age, sex", "n": 3},
    ]


def test_strongest_edges_are_named_by_the_atlas_with_d_and_q(full_report, results, dataset):
    doc = _results(results["edges"])
    atlas = dataset.atlas(doc["provenance"]["parameters"]["atlas"])
    table = pd.read_parquet(results["edges"] / "edge_effects.parquet").set_index("edge")
    rows = _parse(full_report).tables["strongest-edges"][1:]
    assert len(rows) == len(doc["edges"]["strongest"]) == 20
    for row, record in zip(rows, doc["edges"]["strongest"], strict=True):
        a, b = record["index_a"] - 1, record["index_b"] - 1
        assert row[:4] == [atlas.labels[a], atlas.networks[a], atlas.labels[b], atlas.networks[b]]
        edge = table.loc[record["edge"]]
        assert float(row[4]) == pytest.approx(edge["t"], abs=5e-4)
        assert float(row[5]) == pytest.approx(edge["d"], abs=5e-4)
        q = edge["q"]
        assert row[6] == (f"{q:.2e}" if q < 1e-3 else f"{q:.4f}")


def test_every_figure_names_its_harmonization(full_report):
    figures = _parse(full_report).figures
    assert len(figures) == 7
    for figure in figures:
        assert figure["img"] == 1 and "Harmonization:" in figure["caption"], figure


def test_combat_diagnostics_match_numpy(results, dataset):
    doc = _results(results["dmn"])
    params = doc["provenance"]["parameters"]
    assert params["harmonize"] == "combat"
    design = build_design(dataset, params["contrast"], params["covariates"],
                          params["min_per_group"])
    before = dataset.connectivity(params["atlas"])[design.rows].astype(np.float64)
    after, model = harmonize_fitted(before, design, "combat")
    sites = design.data["site"].to_numpy()
    diag = doc["harmonization_diagnostics"]
    assert diag["harmonizer"] == "combat" and diag["n_features"] == before.shape[1]
    assert [s["site"] for s in diag["sites"]] == sorted(set(sites))
    for row in diag["sites"]:
        mask = sites == row["site"]
        assert row["n"] == mask.sum()
        assert row["mean_before"] == pytest.approx(before[mask].mean(), rel=1e-9)
        assert row["mean_after"] == pytest.approx(after[mask].mean(), rel=1e-9)
        assert row["var_before"] == pytest.approx(before[mask].var(axis=0, ddof=1).mean(),
                                                  rel=1e-9)
        assert row["var_after"] == pytest.approx(after[mask].var(axis=0, ddof=1).mean(), rel=1e-9)
    # After ComBat the site means agree far better than before.
    spread = {w: np.std([r[f"mean_{w}"] for r in diag["sites"]]) for w in ("before", "after")}
    assert spread["after"] < spread["before"] / 10
    for i, site in enumerate(model.sites_):
        box = next(b for b in diag["location"] if b["site"] == str(site))
        assert box["median"] == pytest.approx(np.percentile(model.gamma_star_[i], 50))
        assert box["q3"] == pytest.approx(np.percentile(model.gamma_star_[i], 75))
        scale = next(b for b in diag["scale"] if b["site"] == str(site))
        assert scale["mean"] == pytest.approx(model.delta_star_[i].mean())


def test_diagnostics_only_when_harmonized(results, tmp_path):
    assert "harmonization_diagnostics" not in _results(results["edges"])  # harmonize="none"
    page = _parse(render_report(results["edges"], tmp_path / "r.html"))
    assert not any(t == "site-moments" for t in page.tables)
    text = (tmp_path / "r.html").read_text()
    assert '<section id="combat-diagnostics"' not in text
    assert 'href="#combat-diagnostics"' not in text
    assert 'id="sensitivity"' in text


def test_sensitivity_all_covariates_row_is_the_main_analysis(results, full_report):
    doc = _results(results["dmn"])
    main = doc["dmn"]["models"][doc["dmn"]["primary"]]
    table = doc["sensitivity"]
    first = table["rows"][0]
    assert first["left_out"] is None and first["covariates"] == doc["design"]["covariates"]
    # A refit with every covariate: identical to the main model.
    assert first["effect"]["t"] == main["t"] and first["effect"]["d"] == main["d"]
    assert first["effect"]["p"] == main["p"]
    dx = next(c for c in main["coefficients"] if c["term"] == "dx")
    assert first["effect"]["estimate"] == dx["estimate"]
    left_out = [r["left_out"] for r in table["rows"][1:]]
    assert left_out == doc["design"]["covariates"]
    assert all(r["effect"]["t"] != main["t"] for r in table["rows"][1:])
    edges = _results(results["edges"])
    assert edges["sensitivity"]["rows"][0]["effect"]["n_significant"] == edges["edges"]["n_fdr"]
    rows = _parse(full_report).tables["sensitivity"]
    assert rows[1][0] == "all covariates" and rows[1][2] == f"{main['t']:.3f}"
    assert rows[-1][0] == "without head motion (mean FD)"


def _toy_results(directory, kind: str, note: str) -> None:
    directory.mkdir()
    (directory / "results.json").write_text(json.dumps({
        "schema": "confed.analysis/2", "kind": kind, "contrast": "all",
        "groups": {"case": "MDD", "control": "HC"},
        "design": {"n": 2, "n_case": 1, "n_control": 1, "sites": ["A"], "sites_excluded": [],
                   "notes": [note], "model": "y ~ dx"},
        "sample": [], "qc": {"n_excluded": 0, "n_subjects_total": 2, "by_site_reason": []},
        "toy": {"answer": 42, "label": note}, "figures": {},
        "provenance": {"release_name": "r", "release_hash": None, "seed": 0,
                       "parameters": {"harmonize": "none", "min_per_group": 1},
                       "bundle_hashes": {}, "software": {}},
    }))


def test_a_registered_kind_gets_its_section_through_the_registry(tmp_path):
    def hook(analysis):
        return [Section("toy-answer", "Toy", "The toy answer",
                        source="<p class='toy'>answer {{ a }} {{ label }}</p>",
                        context={"a": analysis.results["toy"]["answer"],
                                 "label": analysis.results["toy"]["label"]})]

    evil = "<script>alert(1)</script>"
    register_kind("toyreport", lambda *a: None, description="toy", report_section=hook)
    register_kind("toyplain", lambda *a: None, description="toy without hook")
    try:
        _toy_results(tmp_path / "a", "toyreport", evil)
        _toy_results(tmp_path / "b", "toyplain", evil)
        html = render_report([tmp_path / "a", tmp_path / "b"], tmp_path / "r.html").read_text()
    finally:
        unregister_kind("toyreport")
        unregister_kind("toyplain")
    assert 'href="#toy-answer"' in html and "answer 42" in html
    assert 'href="#toyplain"' in html and 'id="toyplain"' in html  # the generic section
    assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="#mixed-model"' not in html
