"""The whole journey of issue #14, all through the browser (headless Chromium).

Three sites submit (through the API, as their agents do); a steering member
creates a release and runs the DMN analysis; a researcher drafts a proposal
chosen from the catalogue and submits it; two steering members approve; one
site opts out (the others consent, as their agents do); the committee
activates; the researcher exports (the export holds the other sites only) and
runs a remote analysis, and a too-small subgroup is refused with the rule shown.
Members are added by the admin in the portal and sign in with one-time links.
"""

from __future__ import annotations

import json
import re
import signal
import tarfile

import pytest

from sites.bundle import export_bundle
from tests.helpers.browser import playwright_chromium
from tests.helpers.bundles import make_bundles
from tests.helpers.server import Server

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SITES = ("SITE_A", "SITE_B", "SITE_C")


@pytest.fixture
def consortium(tmp_path):
    server = Server(tmp_path / "coord", None).start()
    bundles = make_bundles(tmp_path / "bundles", n_sites=3, seed=1, n_case=30, n_control=30)
    site_tokens = {}
    with server.client() as admin:
        for b in bundles:
            r = admin.post("/sites", json={"id": b.site_id, "name": f"Hospital {b.site_id}",
                                           "public_key_pem": b.signer["public_key_pem"]})
            site_tokens[b.site_id] = r.json()["token"]
            tar = export_bundle(b.path, tmp_path / f"{b.site_id}.tar")
            assert server.upload(site_tokens[b.site_id], tar).status_code == 201
    yield server, site_tokens
    server.kill(signal.SIGTERM)


@pytest.fixture
def chromium():
    yield from playwright_chromium()


def _page(chromium):
    page = chromium.new_context(viewport={"width": 1366, "height": 900},
                                accept_downloads=True).new_page()
    page.set_default_timeout(60_000)
    return page


def _token_sign_in(chromium, url: str, token: str):
    page = _page(chromium)
    page.goto(f"{url}/signin")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{url}/")
    return page


def _link_sign_in(chromium, link: str):
    page = _page(chromium)
    page.goto(link)
    page.get_by_role("button", name="Sign in with this link").click()
    page.wait_for_selector("h1:text('Dashboard')")
    return page


def _add_member(admin, url: str, name: str, institution: str, role: str) -> str:
    admin.goto(f"{url}/admin/members")
    admin.get_by_label("Name").fill(name)
    admin.get_by_label("Institution").fill(institution)
    admin.get_by_label("E-mail").fill(f"{name}@uni.org")
    admin.get_by_label("Role", exact=True).select_option(role)
    admin.get_by_role("button", name="Add member, issue token and sign-in link").click()
    return admin.locator("#secret-link").inner_text().strip()


def _status(page) -> str:
    return page.locator("p .badge").first.inner_text()


def test_journey(consortium, chromium, tmp_path):
    server, site_tokens = consortium
    url = server.url
    admin = _token_sign_in(chromium, url, server.admin_token)
    links = {n: _add_member(admin, url, n, inst, role) for n, inst, role in [
        ("ada", "Uni A", "researcher"), ("bo", "Uni B", "steering"), ("cy", "Uni C", "steering")]}

    # steering: a release from the current submissions, then the DMN analysis
    bo = _link_sign_in(chromium, links["bo"])
    bo.goto(f"{url}/releases")
    per_site = [int(n) for n in bo.locator("tbody td.num").all_inner_texts()]
    assert len(per_site) == 3 and int(bo.locator("tfoot td.num").inner_text()) == sum(per_site)
    bo.get_by_label("Release name").fill("r1")
    bo.get_by_role("button", name="Create release").click()
    assert re.fullmatch(r"[0-9a-f]{64}", bo.locator("dd code").first.inner_text())
    bo.get_by_role("link", name="Run an analysis on this release").click()
    bo.get_by_label("kind").select_option("dmn")
    bo.get_by_role("button", name="Queue analysis").click()
    bo.wait_for_selector("#job-status:text('done')", timeout=300_000)
    assert bo.locator("#report-link").is_visible()

    # researcher: a proposal chosen from the catalogue
    ada = _link_sign_in(chromium, links["ada"])
    ada.goto(f"{url}/proposals/new")
    ada.get_by_label("Title").fill("DMN connectivity and age")
    for field in ("Abstract", "Aims", "Analysis plan"):
        ada.get_by_label(field).fill(f"{field} of the study")
    ada.get_by_label("networks:dosenbach160").check()
    for column in ("dx", "age", "sex"):
        ada.get_by_label(column, exact=True).check()
    ada.get_by_role("button", name="Save draft").click()
    code = re.search(r"/proposals/(P\d+)", ada.url).group(1)
    ada.get_by_label("I accept the data-use agreement").check()
    ada.get_by_role("button", name="Submit").click()
    assert _status(ada) == "submitted"

    # two steering members approve, with the rule on the page
    cy = _link_sign_in(chromium, links["cy"])
    for member in (bo, cy):
        member.goto(f"{url}/proposals/{code}")
        assert "Vote rule" in member.content()
        member.get_by_label("Approve").check()
        member.get_by_label("Comment").fill("sound plan")
        member.get_by_role("button", name="Cast vote").click()
    assert _status(cy) == "approved"

    # SITE_A opts out in the portal; the other sites consent through their agents' API
    site = _token_sign_in(chromium, url, site_tokens["SITE_A"])
    site.goto(f"{url}/proposals/{code}")
    assert "You may opt out until" in site.content()
    site.get_by_label("Opt out").check()
    site.get_by_role("button", name="Record answer").click()
    assert "opt out" in site.locator("dd").nth(2).inner_text()
    for other in ("SITE_B", "SITE_C"):
        with server.client(site_tokens[other]) as c:
            assert c.post(f"/proposals/{code}/consent", json={"decision": "consent"}).is_success
    bo.goto(f"{url}/proposals/{code}")
    bo.get_by_role("button", name=re.compile("Activate")).click()
    assert _status(bo) == "active"

    # the researcher exports: the other sites only
    ada.goto(f"{url}/proposals/{code}")
    ada.get_by_role("button", name="Create an export").click()
    with ada.expect_download() as download:
        ada.get_by_role("link", name=re.compile("Download")).first.click()
    archive = tmp_path / "export.tar"
    download.value.save_as(archive)
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("manifest.json"))
        manifest = json.load(tar.extractfile(member))
    assert manifest["sites"] == ["SITE_B", "SITE_C"]

    # a remote analysis runs; a too-small subgroup is refused with the rule shown
    ada.goto(f"{url}/proposals/{code}/analyses")
    ada.get_by_role("group", name="Covariates").get_by_label("age").check()
    ada.get_by_role("button", name="Run").click()
    assert ada.locator("#res").is_visible(), ada.content()
    assert "n_subjects" in ada.locator("section[aria-labelledby=res]").inner_text()
    assert ada.locator("section[aria-labelledby=res] figure svg[role=img]").count() == 1
    ada.get_by_label("Filter 1 column").select_option("site")
    ada.get_by_label("operator").first.select_option("eq")
    ada.get_by_label('value (for "in": comma-separated)').first.fill("SITE_B")
    ada.get_by_label("Filter 2 column").select_option("age")
    ada.get_by_label("operator").nth(1).select_option("le")
    ada.get_by_label('value (for "in": comma-separated)').nth(1).fill("12")
    ada.get_by_role("button", name="Run").click()
    assert ada.locator("#rule").inner_text() == "min_cell_size", ada.content()
