"""A toy kind registered once drives the CLI, the API and the report (no other edit)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from consortium.analysis.data import ReleaseData
from consortium.analysis.params import AnalysisParams
from consortium.analysis.progress import Steps
from consortium.analysis.registry import get_kind, kind_names, register_kind, unregister_kind
from consortium.analysis.results import KindResult, from_json
from consortium.cli.analyze import app as analyze_app
from tests.consortium.pipeline.test_api_analyses import _wait, coordinator  # noqa: F401

TOY = "toy"


def toy_run(data: ReleaseData, params: AnalysisParams, progress: Steps) -> KindResult:
    """Mean age by group: the smallest possible kind."""
    with progress("toy means"):
        ages = data.dataset.subjects["age"].iloc[data.design.rows].to_numpy()
        case = data.design.data["dx"].to_numpy() > 0
        section = {"n": int(len(ages)), "mean_age_case": float(ages[case].mean()),
                   "mean_age_control": float(ages[~case].mean())}  # fmt: skip
    return KindResult(sections={TOY: section})


def toy_section(analysis):
    from consortium.report.sections import Section

    n = analysis.results[TOY]["n"]
    return [Section(id=TOY, nav="Toy", title="Toy analysis", source=f"<p>toy n = {n}</p>")]


@pytest.fixture
def toy_kind():
    register_kind(TOY, toy_run, description="Mean age per group (test kind).",
                  report_section=toy_section)  # fmt: skip
    yield
    unregister_kind(TOY)


def test_register_and_unregister():
    assert TOY not in kind_names()
    register_kind(TOY, toy_run, description="x")
    try:
        assert kind_names()[-1] == TOY and get_kind(TOY).run is toy_run
        with pytest.raises(ValueError, match="already registered"):
            register_kind(TOY, toy_run, description="x")
    finally:
        unregister_kind(TOY)
    assert TOY not in kind_names()
    with pytest.raises(KeyError, match="unknown analysis kind 'toy'"):
        get_kind(TOY)
    with pytest.raises(ValueError, match="unknown analysis kind 'toy'"):
        AnalysisParams(kind=TOY)


def test_toy_kind_in_cli_and_report(toy_kind, synthetic_bundles, tmp_path):
    from consortium.report import render_report

    bundles = [a for b in synthetic_bundles for a in ("--bundles", str(b.path))]
    runner = CliRunner()
    listed = runner.invoke(analyze_app, ["--help"])
    assert listed.exit_code == 0 and TOY in listed.output
    out = tmp_path / "toy"
    result = runner.invoke(analyze_app, [TOY, "--out", str(out), "--quiet", *bundles])
    assert result.exit_code == 0, result.output
    doc = from_json((out / "results.json").read_text())
    assert doc.kind == TOY and doc.provenance["parameters"]["kind"] == TOY
    assert doc.section(TOY)["n"] == doc.design.n > 0
    html = render_report([out], tmp_path / "report.html").read_text()
    assert f"toy n = {doc.design.n}" in html
    bad = runner.invoke(analyze_app, [TOY, "--out", str(tmp_path / "x"), "--harmonize", "nope",
                                      *bundles])  # fmt: skip
    assert bad.exit_code == 1 and "unknown harmonization 'nope'" in bad.output


def test_toy_kind_in_api(toy_kind, coordinator):  # noqa: F811
    client, admin, _, _ = coordinator
    r = client.post("/api/v1/analyses", headers=admin,
                    json={"release": "r1", "kind": TOY, "harmonize": "none"})  # fmt: skip
    assert r.status_code == 202, r.text
    state = _wait(client, admin, r.json()["id"])
    assert state["status"] == "done", state
    assert state["results"]["schema"] == "confed.analysis/2"
    assert state["results"][TOY]["n"] == state["results"]["design"]["n"]
    unknown = client.post("/api/v1/analyses", headers=admin,
                          json={"release": "r1", "kind": "nope"})  # fmt: skip
    assert unknown.status_code == 422
    assert "unknown analysis kind 'nope'" in json.dumps(unknown.json())
