"""Three site agents, each its own process, answer a real coordinator process.

A federated DMN mixed model and a federated edge-wise model (12,720 edges of the
Dosenbach-160 atlas) equal the pooled fits on the same subjects; every message of the
runs passes the leakage validator; a site whose policy does not allow ``mass_stats``
refuses, and the refusal is named in the outcome. Tasks, deliveries and refusals are
in the coordinator's audit chain and in each site's local log.
"""

from __future__ import annotations

import json
import os
import signal
import stat

import numpy as np
import pandas as pd
import pytest

from consortium.analysis.mass import mass_mixed_model
from consortium.analysis.mixed import mixed_model
from consortium.db.models import AuditEntry
from consortium.federated.orchestrator import federated_mass, federated_mixed, run_federated
from consortium.federated.tasks import run_status
from consortium.settings import Settings
from sites.bundle import read_bundle
from sites.federated.messages import arrays_of, validate_message
from tests.consortium.federated.world import ATLAS, federated_world
from tests.helpers.bundles import DX_LABELS

SITES = ("SITE_A", "SITE_B", "SITE_C")
DESIGN = {
    "dx": "dx",
    "fixed": ["dx", "age", "sex", "mean_fd"],
    "random_slopes": ["dx"],
    "codes": {"dx": {DX_LABELS["case"]: 1, DX_LABELS["control"]: -1}, "sex": {"M": 1, "F": 2}},
}
POLICIES = {
    "SITE_A": '["mixed_stats", "mass_stats", "meta_summary"]',
    "SITE_B": '["mixed_stats", "mass_stats"]',
    "SITE_C": '["mixed_stats"]',  # refuses mass_stats
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with federated_world(tmp_path_factory.mktemp("federated"), POLICIES) as w:
        # a 12,720-edge message is about 1.2 MB: above max_json_bytes (1 MiB), within the
        # federated result route's own cap (max_federated_message_bytes)
        assert Settings.load(w["server"].root).max_json_bytes < 1_200_000
        yield w


def _pooled(world, sites, source):
    frames, ys = [], []
    for site in sites:
        b = read_bundle(world["bundles"][site])
        frames.append(b.subjects.assign(site=site))
        if source == "dmn":
            ys.append(b.network_summaries(ATLAS)[[_dmn_column(b)]].to_numpy(float))
        else:
            ys.append(np.asarray(b.connectivity(ATLAS), dtype=float))
    data = pd.concat(frames, ignore_index=True)
    data["dx"] = data.dx.map(DESIGN["codes"]["dx"]).astype(float)
    data["sex"] = data.sex.map(DESIGN["codes"]["sex"]).astype(float)
    return data, np.vstack(ys)


def _dmn_column(bundle) -> str:
    columns = [c for c in bundle.network_summaries(ATLAS).columns if "default" in c.lower()]
    within = [c for c in columns if c.lower().count("default") == 2]
    return (within or columns)[0]


def _check_leakage(world, run_id: int, expected_n: dict[str, int]) -> int:
    with world["coord"].db.session() as s:
        status = run_status(s, run_id)
    checked = 0
    for task in status["tasks"]:
        message = task["message"]
        assert message is not None, f"site {task['site']} did not answer"
        validate_message(message, task["params"].get("dims"))
        if message["status"] == "ok":
            assert message["n"] == expected_n[task["site"]]
            for name, array in arrays_of(message).items():
                assert expected_n[task["site"]] not in array.shape, (task["site"], name)
        checked += 1
    return checked


def test_federated_dmn_and_edges_equal_pooled(world):
    coord = world["coord"]
    b0 = read_bundle(world["bundles"]["SITE_A"])
    source = {"type": "networks", "atlas": ATLAS, "columns": [_dmn_column(b0)]}
    fit, outcome = federated_mixed(coord, DESIGN, source, SITES, reml=False, timeout=300)
    assert outcome.sites_used == list(SITES) and not outcome.refused and not outcome.missing
    data, Y = _pooled(world, SITES, "dmn")
    ref = mixed_model(data.assign(y=Y[:, 0]), "y", DESIGN["fixed"], "site", ["dx"], reml=False)
    for name in ("params", "bse", "tvalues"):
        np.testing.assert_allclose(getattr(fit, name), getattr(ref, name), rtol=1e-8, atol=1e-8)
    assert fit.llf == pytest.approx(ref.llf, rel=1e-10, abs=1e-8)
    counts = {s: len(read_bundle(world["bundles"][s]).subjects) for s in SITES}
    assert _check_leakage(world, outcome.run_id, counts) == 3

    # edges: SITE_C's policy does not allow mass_stats; it refuses and is named
    edges = {"type": "connectivity", "atlas": ATLAS}
    res, out = federated_mass(coord, DESIGN, edges, SITES, reml=False, timeout=300,
                              missing="proceed")  # fmt: skip
    assert out.sites_used == ["SITE_A", "SITE_B"]
    assert list(out.refused) == ["SITE_C"] and "allow-list" in out.refused["SITE_C"]
    data, Y = _pooled(world, ["SITE_A", "SITE_B"], "edges")
    assert res.params.shape[0] == Y.shape[1] == 12720
    ref = mass_mixed_model(Y, data, DESIGN["fixed"], "site", ["dx"], reml=False)
    for name in ("params", "bse", "tvalues", "llf"):
        np.testing.assert_allclose(getattr(res, name).to_numpy(), getattr(ref, name).to_numpy(),
                                   rtol=1e-8, atol=1e-8)  # fmt: skip
    assert _check_leakage(world, out.run_id, counts) == 3

    # audit chain and local logs
    with coord.db.session() as s:
        actions = [e.action for e in s.query(AuditEntry).filter(
            AuditEntry.target.like("federated_task:%"))]  # fmt: skip
    assert actions.count("federated.task.create") == 6
    assert actions.count("federated.task.deliver") == 5
    assert actions.count("federated.task.refuse") == 1
    for site in SITES:
        log = world["tmp"] / f"{site}-state" / "log.jsonl"
        assert stat.S_IMODE(os.stat(log).st_mode) == 0o600
        events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
        assert events.count("message.sent") == 2, (site, events)


def test_retry_is_idempotent_and_silent_site_is_named(world):
    # the same stored answer posted again is a duplicate, not a second delivery
    answers = sorted((world["tmp"] / "SITE_A-state" / "answers").glob("*.json"))
    assert answers
    message = json.loads(answers[0].read_text())
    token = (world["tmp"] / "SITE_A.token").read_text()
    with world["server"].client(token) as http:
        r = http.post(f"/federated/tasks/{message['task_id']}/result", json=message)
        assert r.status_code == 200 and r.json()["created"] is False, r.text
        forged = {**message, "n": message["n"] + 1}
        r = http.post(f"/federated/tasks/{message['task_id']}/result", json=forged)
        assert r.status_code == 409, r.text
    # a site without an agent never answers: named, with "wait" an error, with "proceed" listed
    proc = world["agents"]["SITE_B"]
    proc.send_signal(signal.SIGSTOP)
    try:
        from consortium.federated.orchestrator import FederatedIncomplete

        with pytest.raises(FederatedIncomplete, match="SITE_B"):
            run_federated(world["coord"], "mixed_stats", {"design": DESIGN, "source": {
                "type": "networks", "atlas": ATLAS, "columns": ["x"]}}, SITES, timeout=3)
        out = run_federated(world["coord"], "mixed_stats", {"design": DESIGN, "source": {
            "type": "networks", "atlas": ATLAS, "columns": ["x"]}}, ["SITE_A", "SITE_B"],
            timeout=3, missing="proceed")  # fmt: skip
        assert out.missing == ["SITE_B"]
        # SITE_A could not compute (no column "x"): a refusal naming the column
        assert "x" in out.refused["SITE_A"]
    finally:
        proc.send_signal(signal.SIGCONT)
