"""Notifications: in-app on the dashboard, and e-mail through a local SMTP server process.

The SMTP server is ``aiosmtpd`` run as its own process, delivering to a Maildir.
An e-mail must hold no data: no proposal code or title, only the sign-in address.
"""

from __future__ import annotations

import mailbox
import re
import socket
import subprocess
import sys
import time

import pytest

from consortium.portal.settings import PortalSettings
from consortium.proposals import lifecycle
from consortium.proposals.models import Member
from tests.consortium.portal.test_portal_security import sign_in
from tests.consortium.test_authorization_matrix import REQUEST, World
from tests.helpers.server import free_port


@pytest.fixture
def smtp(tmp_path):
    port = free_port()
    maildir = tmp_path / "maildir"
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}",
         "-c", "aiosmtpd.handlers.Mailbox", str(maildir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise AssertionError(f"SMTP server did not start: {proc.stdout.read()!r}")
    yield port, maildir
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("portal-notify"))
    yield w
    w.close()


def _submitted(world: World, title: str) -> str:
    with world.coord.db.session() as s:
        member = s.get(Member, world.members["r_nogrant"])
        p = lifecycle.create_proposal(s, world.coord.store, member, "t",
                                      {**REQUEST, "title": title})
        lifecycle.accept_dua(s, p, member, "1.0", "t")
        lifecycle.submit(s, p, "t")
        return p.code


def test_vote_due_in_app_and_by_email_without_data(world, smtp):
    port, maildir = smtp
    PortalSettings(smtp_host="127.0.0.1", smtp_port=port, smtp_from="portal@consortium.org",
                   public_url="https://portal.consortium.org").save(world.server.root)
    title = "Secret cohort study"
    code = _submitted(world, title)
    steering = sign_in(world, world.tokens["steering"])
    dashboard = steering.get("/").text
    assert f"Your vote is due on {code}: {title}" in dashboard
    steering.get("/")  # a second sweep notifies nobody twice
    messages = list(mailbox.Maildir(maildir))
    recipients = sorted(m["To"] for m in messages)
    assert recipients == ["bo@x.org", "cy@x.org"], recipients  # the two steering members
    for m in messages:
        body = m.get_payload(decode=True).decode()
        assert "https://portal.consortium.org/signin" in body
        assert code not in body and title not in body and code not in m["Subject"]
        assert not re.search(r"\b(S0\d|r1|dx|age)\b", body)
    # the proposer is not asked to vote; the researcher sees nothing about votes
    researcher = sign_in(world, world.tokens["r_nogrant"])
    assert "vote is due" not in researcher.get("/").text
