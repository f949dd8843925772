"""Remote analyses with ``mode: federated``: real site agents, a researcher's token.

Four synthetic sites are uploaded to a coordinator process (release r1; S04 opts out)
and each of S01-S03 runs its site agent (``python -m sites.federated.cli``) on the
same bundle. The federated result equals the pooled remote result; a site whose own
minimum cell size is not met refuses, and the refusal names the rule.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.consortium.federated.world import _agent_toml, start_agent, stop_agent
from tests.consortium.proposals.test_meta_and_exports import GRANTED, _active_proposal
from tests.consortium.proposals.test_meta_and_exports import world as _world  # noqa: F401

world = _world


def _start_agent(world, site: str, min_cell: int) -> subprocess.Popen:
    tmp, server = world["tmp"], world["server"]
    token = tmp / f"{site}.token"
    token.write_text(world["site_tokens"][site])
    text = _agent_toml(site, server.url, world["bundles"][site], world["keys"][site],
                       token, tmp / f"{site}-state", '["mixed_stats", "meta_summary"]')
    text = text.replace("min_cell = 5", f"min_cell = {min_cell}")
    cfg = tmp / f"{site}-agent-{min_cell}.toml"
    cfg.write_text(text)
    return start_agent(cfg, tmp / f"{site}-agent-{min_cell}.log")


@pytest.fixture(scope="module")
def agents(world):
    procs = {site: _start_agent(world, site, 5) for site in GRANTED}
    yield procs
    for proc in procs.values():
        stop_agent(proc)


def _coefficients(result: dict) -> dict:
    return {c["term"]: c for c in result["coefficients"]}


@pytest.mark.parametrize("analysis", ["mixed_model", "meta_analysis"])
def test_federated_equals_pooled(world, agents, analysis):
    code = _active_proposal(world, ["networks:toy"], ["dx", "age", "sex"])
    query = {"analysis": analysis, "measure": "networks:toy", "outcome": "none__none",
             "covariates": ["age"]}  # fmt: skip
    with world["server"].client(world["researcher"]) as r:
        pooled = r.post(f"/proposals/{code}/analyses", json=query)
        assert pooled.status_code == 200, pooled.text
        fed = r.post(f"/proposals/{code}/analyses", json={**query, "mode": "federated"})
        assert fed.status_code == 200, fed.text
    p, f = pooled.json()["result"], fed.json()["result"]
    assert f["mode"] == "federated" and sorted(f["federated"]["sites_used"]) == list(GRANTED)
    assert f["n_subjects"] == p["n_subjects"] and f["cells"] == p["cells"]
    if analysis == "mixed_model":
        pc, fc = _coefficients(p), _coefficients(f)
        assert set(pc) == set(fc) and len(pc) == 3
        for term in pc:
            for key in ("estimate", "se", "t", "p"):
                assert fc[term][key] == pytest.approx(pc[term][key], rel=1e-8, abs=1e-10)
        for k, v in p["variance_components"].items():
            assert f["variance_components"][k] == pytest.approx(v, rel=1e-6, abs=1e-10)
    else:
        assert set(f["sites"]) == set(p["sites"]) == set(GRANTED)
        for site in GRANTED:
            for key in ("g", "vi"):
                assert f["sites"][site][key] == pytest.approx(p["sites"][site][key], rel=1e-8)
        for key in ("estimate", "se", "p", "tau2"):
            assert f["pooled"][key] == pytest.approx(p["pooled"][key], rel=1e-8, abs=1e-12)


def test_site_below_the_minimum_refuses_naming_the_rule(world, agents):
    """Pooled, sex=M is large enough; at S01 alone it is not, so S01's agent refuses."""
    code = _active_proposal(world, ["networks:toy"], ["dx", "age", "sex"])
    query = {"analysis": "mixed_model", "measure": "networks:toy", "outcome": "none__none",
             "covariates": ["sex"]}  # fmt: skip
    with world["server"].client(world["researcher"]) as r:
        assert r.post(f"/proposals/{code}/analyses", json=query).status_code == 200
        res = r.post(f"/proposals/{code}/analyses", json={**query, "mode": "federated"})
    assert res.status_code == 422, res.text
    message = res.json()["error"]["message"]
    assert "refused by rule min_cell_size" in message and "site S01" in message
