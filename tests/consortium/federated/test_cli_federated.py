"""``confed analyze dmn|edges --mode federated`` equals the pooled run on the same data.

A real coordinator process and three site agent processes (:mod:`world`); the command
creates tasks in the coordinator's database and the agents answer through the server.
``results.json`` (and the edge table) equal the pooled ``confed analyze`` on the same
bundles to 1e-8; every message of the runs passes the leakage validator and carries no
subject dimension; SITE_C's policy does not allow ``mass_stats``, so it refuses the
edges and is named in ``results.json``.
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

POLICIES = {
    "SITE_A": '["mixed_stats", "mass_stats", "meta_summary"]',
    "SITE_B": '["mixed_stats", "mass_stats", "meta_summary"]',
    "SITE_C": '["mixed_stats", "meta_summary"]',  # refuses mass_stats
}
TOL = 1e-8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with federated_world(tmp_path_factory.mktemp("fedcli"), POLICIES) as w:
        yield w


def _analyze(world, kind, out, *extra):
    confed("analyze", kind, "--out", str(out), "--harmonize", "none", "--atlas", ATLAS,
           "--quiet", *extra)  # fmt: skip
    return json.loads((out / "results.json").read_text())


def _federated(world, kind, out):
    return _analyze(world, kind, out, "--mode", "federated", "--root", str(world["server"].root),
                    "--timeout", "300", "--missing", "proceed")  # fmt: skip


def _pooled(world, kind, out, sites):
    bundles = [x for s in sites for x in ("--bundles", str(world["bundles"][s]))]
    return _analyze(world, kind, out, *bundles)


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


def test_unavailable_kind_is_a_clear_error(world):
    result = confed("analyze", "networks", "--out", str(world["tmp"] / "nets"), "--mode",
                    "federated", "--root", str(world["server"].root), "--harmonize", "none",
                    "--atlas", ATLAS, check=False)  # fmt: skip
    assert result.returncode == 1
    assert "not available in federated mode" in result.stdout
