"""The federated message contract: the leakage validator rejects subject-level arrays."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sites.federated.compute import mixed_stats
from sites.federated.messages import (
    MessageError,
    arrays_of,
    make_message,
    sign_message,
    validate_message,
    verify_signature,
)
from sites.federated.policy import PolicyError, policy_from_toml

DESIGN = {"dx": "dx", "fixed": ["dx", "age"], "random_slopes": ["dx"],
          "codes": {"dx": {"MDD": 1, "HC": -1}}}  # fmt: skip


@pytest.fixture
def table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 30
    return pd.DataFrame({"dx": np.repeat(["MDD", "HC"], 15), "age": rng.normal(40, 9, n)})


def _array(value: np.ndarray) -> dict:
    return make_message({"id": "x", "kind": "mass_stats"}, "S01", 1, {}, {}, {"a": value})[
        "arrays"
    ]["a"]


def _message(table, n_features=3, min_cell=5):
    task = {"id": "t1", "kind": "mass_stats", "params": {"design": DESIGN}}
    Y = np.random.default_rng(1).normal(size=(len(table), n_features))
    return json.loads(json.dumps(mixed_stats(task, "S01", table, Y, min_cell)))


def test_genuine_message_passes(table):
    msg = _message(table)
    validate_message(msg, {"feature": 3}, min_cell=5)
    assert msg["status"] == "ok" and msg["groups"] == {"case": 15, "control": 15}
    assert all(n != len(table) for a in arrays_of(msg).values() for n in a.shape)
    assert arrays_of(msg)["XtX"][0, 0] == len(table)


def test_forged_subject_rows_are_rejected(table):
    msg = _message(table)
    forged = copy.deepcopy(msg)
    # the site's raw outcomes, subjects x features, in place of X'Y
    forged["arrays"]["XtY"] = _array(np.full((30, 3), 0.5))
    with pytest.raises(MessageError, match="XtY"):
        validate_message(forged)
    # the same, with the dims forged to match: the subject count gives it away
    forged["dims"]["feature"] = 30
    for name in ("ZtY", "YtY"):
        shape = [30, *forged["arrays"][name]["shape"][1:]]
        forged["arrays"][name] = _array(np.zeros(shape))
    forged["arrays"]["XtY"] = _array(np.full((30, 3), 0.5))
    with pytest.raises(MessageError, match="subject count 30"):
        validate_message(forged)
    # and against the task's own dims
    with pytest.raises(MessageError, match="dims.feature"):
        validate_message(forged, {"feature": 3})
    extra = copy.deepcopy(msg)
    extra["arrays"]["rows"] = _array(np.ones(30))
    with pytest.raises(MessageError, match="arrays: expected exactly"):
        validate_message(extra)
    smuggled = copy.deepcopy(msg)
    smuggled["subjects"] = [[1, 2]]
    with pytest.raises(MessageError, match="unknown fields"):
        validate_message(smuggled)


def test_small_cells_refuse(table):
    msg = _message(table.iloc[:20], min_cell=10)  # 15 cases, 5 controls
    assert msg["status"] == "refused"
    assert "control (5)" in msg["reason"] and not msg["arrays"]
    validate_message(msg)
    ok = _message(table.iloc[:20], min_cell=5)
    with pytest.raises(MessageError, match="groups.control: 5 subjects"):
        validate_message(ok, min_cell=10)


def test_signature_round_trip(table):
    key = Ed25519PrivateKey.generate()
    signed = sign_message(_message(table), key)
    verify_signature(json.loads(json.dumps(signed)), key.public_key())
    tampered = {**signed, "n": signed["n"] + 1}
    with pytest.raises(MessageError, match="signature does not verify"):
        verify_signature(tampered, key.public_key())


def test_policy_fields_are_checked():
    policy = policy_from_toml({"allow": ["mixed_stats"], "min_cell": 8})
    assert policy.check({"kind": "mixed_stats"}) is None
    assert "allow-list" in policy.check({"kind": "mass_stats"})
    with pytest.raises(PolicyError, match="allow: unknown task kinds"):
        policy_from_toml({"allow": ["dump_rows"]})
    with pytest.raises(PolicyError, match="min_cell"):
        policy_from_toml({"min_cell": 0})


def test_local_data_errors_do_not_leave_the_site_in_the_refusal():
    """A local read error may name a path: the refusal sent carries only its kind."""
    from types import SimpleNamespace

    from sites.federated.node import Agent

    agent = object.__new__(Agent)
    agent.config = SimpleNamespace(site_id="S01", policy=SimpleNamespace(min_cell=5))
    logged = []
    agent.log = lambda event, **details: logged.append((event, details))

    def unreadable(source):
        raise ValueError("/srv/hospital/patients/sub-123_connectivity.parquet: unreadable")

    agent.local_data = unreadable
    task = {"id": "t1", "kind": "mixed_stats", "params": {}}
    message = agent._compute(task)
    assert message["status"] == "refused"
    assert "/srv" not in message["reason"] and "sub-123" not in message["reason"]
    assert "ValueError" in message["reason"]
    assert "sub-123" in logged[-1][1]["error"]  # the full text stays in the site's log
