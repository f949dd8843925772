"""The command-line twins of the portal's actions, against a real server.

``confed proposal draft|submit|vote|consent|activate|status|analyze`` over the API,
``confed coord token list``, ``confed coord audit show`` and ``confed coord signin-link``
on the root.
"""

from __future__ import annotations

import re

import pytest

from tests.consortium.test_authorization_matrix import World
from tests.helpers.server import confed


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("portal-cli"))
    yield w
    w.close()


def as_(monkeypatch, world: World, role: str) -> None:
    monkeypatch.setenv("CONFED_COORDINATOR_URL", world.server.url)
    monkeypatch.setenv("CONFED_TOKEN", world.tokens[role])


def test_proposal_flow_from_the_command_line(world, monkeypatch):
    as_(monkeypatch, world, "r_nogrant")
    out = confed("proposal", "draft", "--title", "CLI study", "--release", "r1",
                 "--measure", "networks:toy", "--column", "dx", "--column", "age",
                 "--abstract", "a", "--aims", "b", "--plan", "c").stdout
    code = re.match(r"(P\d+) drafted", out).group(1)
    refused = confed("proposal", "submit", code, check=False)
    assert refused.returncode == 1 and "--accept-dua" in refused.stdout
    assert f"{code} submitted" in confed("proposal", "submit", code, "--accept-dua").stdout
    as_(monkeypatch, world, "steering")
    assert "approve" in confed("proposal", "vote", code, "--decision", "approve",
                               "--comment", "fine").stdout
    monkeypatch.setenv("CONFED_TOKEN", world.tokens["steering2"])
    confed("proposal", "vote", code, "--decision", "approve")
    as_(monkeypatch, world, "site")
    assert "opt_out" in confed("proposal", "consent", code, "--decision", "opt_out").stdout
    as_(monkeypatch, world, "admin")
    busy = confed("proposal", "activate", code, check=False)
    assert busy.returncode == 1 and "S02" in busy.stdout  # S02 has not answered
    as_(monkeypatch, world, "r_nogrant")
    status = confed("proposal", "status", code).stdout
    assert f"{code} approved" in status and "site S01: opt_out" in status
    assert "site S02: no answer" in status
    bad = confed("proposal", "analyze", code, "--measure", "networks:toy", "--outcome", "x",
                 check=False)
    assert bad.returncode == 1 and "only while it is active" in bad.stdout, bad.stdout


def test_coord_token_list_audit_show_and_signin_link(world):
    tokens = world.server.cli("token", "list").stdout
    assert "admin" in tokens and "cfd_" not in tokens
    shown = world.server.cli("audit", "show", "--action", "token.", "--size", "5").stdout
    assert "token.issue" in shown and re.search(r"page 1 of \d+", shown)
    bad = world.server.cli("audit", "show", "--from", "yesterday", check=False)
    assert bad.returncode == 1 and "not a date" in bad.stdout
    token_id = world.spare_token()
    link = world.server.cli("signin-link", str(token_id), "--url", world.server.url).stdout
    assert re.search(rf"{re.escape(world.server.url)}/signin/link/\S+", link)
