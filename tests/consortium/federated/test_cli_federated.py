"""``confed analyze dmn|edges --mode federated`` equals the pooled run on the same data.

A real coordinator process and three site agent processes (:mod:`world`); the command
creates tasks in the coordinator's database and the agents answer through the server.
``results.json`` (and the edge table) equal the pooled ``confed analyze`` on the same
bundles to 1e-8; every message of the runs passes the leakage validator and carries no
subject dimension; SITE_C's policy does not allow ``mass_stats``, so it refuses the
edges and networks and is named in ``results.json``. ``networks`` and
``--harmonize combat`` (distributed ComBat, the harmonized edges kept at the sites)
equal the pooled run too; for edges with ComBat, SITE_C takes part in ComBat, refuses
the model round, and ComBat is run again without it (as the pooled run on A and B).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from consortium.federated.tasks import run_status
from sites.bundle import read_bundle
from sites.federated.messages import arrays_of, validate_message
from tests.consortium.federated.world import ATLAS, federated_world
from tests.helpers.server import confed

COMBAT = '"combat_stats", "combat_residuals", "combat_apply"'
POLICIES = {
    "SITE_A": f'["mixed_stats", "mass_stats", "meta_summary", {COMBAT}]',
    "SITE_B": f'["mixed_stats", "mass_stats", "meta_summary", {COMBAT}]',
    "SITE_C": f'["mixed_stats", "meta_summary", {COMBAT}]',  # refuses mass_stats
}
TOL = 1e-8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with federated_world(tmp_path_factory.mktemp("fedcli"), POLICIES) as w:
        yield w


def _analyze(world, kind, out, harmonize, *extra):
    confed("analyze", kind, "--out", str(out), "--harmonize", harmonize, "--atlas", ATLAS,
           "--quiet", *extra)  # fmt: skip
    return json.loads((out / "results.json").read_text())


def _federated(world, kind, out, harmonize="none"):
    return _analyze(world, kind, out, harmonize, "--mode", "federated", "--root",
                    str(world["server"].root), "--timeout", "300", "--missing",
                    "proceed")  # fmt: skip


def _pooled(world, kind, out, sites, harmonize="none"):
    bundles = [x for s in sites for x in ("--bundles", str(world["bundles"][s]))]
    return _analyze(world, kind, out, harmonize, *bundles)


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=TOL, atol=TOL)


def _check_messages(world, doc) -> int:
    counts = {s: len(read_bundle(b).subjects) for s, b in world["bundles"].items()}
    checked = 0
    for round_ in doc["provenance"]["federated"]:
        with world["coord"].db.session() as s:
            status = run_status(s, round_["run_id"])
        for task in status["tasks"]:
            message = task["message"]
            validate_message(message, task["params"].get("dims"))
            for name, array in arrays_of(message).items():
                assert counts[task["site"]] not in array.shape, (task["site"], name)
            checked += 1
    return checked


def test_dmn_federated_equals_pooled(world):
    tmp = world["tmp"]
    fed = _federated(world, "dmn", tmp / "fed-dmn")
    ref = _pooled(world, "dmn", tmp / "pooled-dmn", list(POLICIES))
    assert fed["provenance"]["parameters"]["mode"] == "federated"
    assert ref["provenance"]["parameters"]["mode"] == "pooled"
    assert set(fed) == set(ref) - {"sensitivity"}  # same schema; no sensitivity yet
    got, want = fed["dmn"]["models"]["none"], ref["dmn"]["models"]["none"]
    for key in ("t", "p", "d", "llf", "residual_variance", "df"):
        _close(got[key], want[key])
    _close(got["slope_lrt"]["llf_without_slope"], want["slope_lrt"]["llf_without_slope"])
    _close(list(got["variance_components"].values()), list(want["variance_components"].values()))
    assert [c["term"] for c in got["coefficients"]] == [c["term"] for c in want["coefficients"]]
    for field in ("estimate", "se", "t", "p"):
        _close([c[field] for c in got["coefficients"]], [c[field] for c in want["coefficients"]])
    for field in ("estimate", "se", "tau2", "q", "i2"):
        _close(fed["meta"][field], ref["meta"][field])
    for field in ("n", "n_case", "n_control", "sites", "fixed", "model"):
        assert fed["design"][field] == ref["design"][field], field
    assert _check_messages(world, fed) == 9  # 3 rounds x 3 sites


def test_edges_federated_equals_pooled_and_names_the_refusal(world):
    tmp = world["tmp"]
    fed = _federated(world, "edges", tmp / "fed-edges")
    excluded = fed["design"]["sites_excluded"]
    assert [e["site"] for e in excluded] == ["SITE_C"] and "allow-list" in excluded[0]["reason"]
    assert fed["provenance"]["federated"][0]["refused"].keys() == {"SITE_C"}
    ref = _pooled(world, "edges", tmp / "pooled-edges", ["SITE_A", "SITE_B"])
    a = pd.read_parquet(tmp / "fed-edges" / "edge_effects.parquet")
    b = pd.read_parquet(tmp / "pooled-edges" / "edge_effects.parquet")
    assert len(a) == len(b) == 12720
    for column in ("estimate", "se", "t", "p", "d", "q"):
        _close(a[column], b[column])
    for field in ("n_edges", "n_fdr", "max_abs_t"):
        _close(fed["edges"][field], ref["edges"][field])
    assert fed["design"]["n"] == ref["design"]["n"]
    assert _check_messages(world, fed) == 3
    # the report marks the run as federated, naming the refusing site
    from consortium.report import render_report

    page = render_report(tmp / "fed-edges", tmp / "fed-edges-report.html").read_text()
    assert ("Federated run: subject-level data stayed at the sites; combined from per-site "
            "statistics of 2 sites (refused: SITE_C; silent: none).") in page
    pooled_page = render_report(tmp / "pooled-edges", tmp / "pooled-report.html").read_text()
    assert "Federated run" not in pooled_page


def _close_combat(a, b):
    """Federated ComBat data equal pooled ComBat to ~1e-12, not bit for bit (other sums).

    Where a feature's profiled likelihood is flat in the variance components (near
    the boundary), the optimizer turns that into up to ~1e-5 relative in t for a few
    features; the DMN model meets 1e-8 (``test_dmn_with_combat_equals_pooled``).
    """
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-4, atol=1e-8)


def _same_model(got, want):
    for key in ("t", "p", "d", "llf", "residual_variance", "df"):
        _close(got[key], want[key])
    for field in ("estimate", "se", "t", "p"):
        _close([c[field] for c in got["coefficients"]], [c[field] for c in want["coefficients"]])


def test_dmn_with_combat_equals_pooled(world):
    tmp = world["tmp"]
    fed = _federated(world, "dmn", tmp / "fed-dmn-combat", "combat")
    ref = _pooled(world, "dmn", tmp / "pooled-dmn-combat", list(POLICIES), "combat")
    assert fed["dmn"]["primary"] == ref["dmn"]["primary"] == "combat"
    assert set(fed["dmn"]["models"]) == set(ref["dmn"]["models"]) == {"none", "combat"}
    for harm in ("none", "combat"):
        _same_model(fed["dmn"]["models"][harm], ref["dmn"]["models"][harm])
    kinds = [r["kind"] for r in fed["provenance"]["federated"]]
    assert kinds.count("combat_apply") == 1 and kinds.count("mixed_stats") == 4
    assert _check_messages(world, fed) == 3 * 8  # (meta, 2 mixed, 3 ComBat, 2 mixed) x 3


def test_edges_with_combat_equals_pooled_without_the_refusing_site(world):
    tmp = world["tmp"]
    fed = _federated(world, "edges", tmp / "fed-edges-combat", "combat")
    assert [e["site"] for e in fed["design"]["sites_excluded"]] == ["SITE_C"]
    combat_runs = [r for r in fed["provenance"]["federated"] if r["kind"] == "combat_stats"]
    assert [sorted(r["sites_used"]) for r in combat_runs] == [
        ["SITE_A", "SITE_B", "SITE_C"], ["SITE_A", "SITE_B"]]  # ComBat again without C
    _pooled(world, "edges", tmp / "pooled-edges-combat", ["SITE_A", "SITE_B"], "combat")
    a = pd.read_parquet(tmp / "fed-edges-combat" / "edge_effects.parquet")
    b = pd.read_parquet(tmp / "pooled-edges-combat" / "edge_effects.parquet")
    for column in ("estimate", "se", "t", "p", "q"):
        _close_combat(a[column], b[column])


@pytest.mark.parametrize("harmonize", ["none", "combat"])
def test_networks_federated_equals_pooled(world, harmonize):
    tmp = world["tmp"]
    fed = _federated(world, "networks", tmp / f"fed-nets-{harmonize}", harmonize)
    ref = _pooled(world, "networks", tmp / f"pooled-nets-{harmonize}", ["SITE_A", "SITE_B"],
                  harmonize)  # fmt: skip
    assert [e["site"] for e in fed["design"]["sites_excluded"]] == ["SITE_C"]
    a = pd.read_parquet(tmp / f"fed-nets-{harmonize}" / "network_effects.parquet")
    b = pd.read_parquet(tmp / f"pooled-nets-{harmonize}" / "network_effects.parquet")
    assert a[["pair", "harmonization"]].equals(b[["pair", "harmonization"]]) and len(a) > 10
    for column in ("estimate", "se", "t", "p", "q"):
        (_close if harmonize == "none" else _close_combat)(a[column], b[column])
    for field in ("n_pairs", "n_fdr"):
        assert fed["networks"][field] == ref["networks"][field]


def test_unavailable_kind_and_harmonizer_are_clear_errors(world):
    for kind, harmonize, named in (("voxels", "none", "kind 'voxels'"),
                                   ("dmn", "combat-gam", "harmonize 'combat-gam'")):  # fmt: skip
        result = confed("analyze", kind, "--out", str(world["tmp"] / f"x-{kind}"), "--mode",
                        "federated", "--root", str(world["server"].root), "--harmonize",
                        harmonize, "--atlas", ATLAS, check=False)  # fmt: skip
        assert result.returncode == 1
        assert "not available in federated mode" in result.stdout and named in result.stdout
