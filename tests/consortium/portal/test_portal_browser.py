"""The portal in headless Chromium (Debian's, driven by Playwright; no browser download).

Runs when chromium is installed (required with ``CONFED_TEST_BROWSER=1``: then a
missing chromium fails the test). With ``CONFED_SCREENSHOT_DIR`` set, each role's
main page is saved there as ``portal-<role>.png`` (how ``docs/img/portal-*.png``
are made).
"""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest

from tests.consortium.test_authorization_matrix import REQUEST, World
from tests.helpers.browser import playwright_chromium, publish_screenshot

XSS = '<script>document.title="pwned"</script><img src=x onerror="document.title=\'pwned\'">'
ROLE_PAGES = {"admin": "/", "steering": "/proposals", "researcher": "/", "site": "/sites/S01"}
TOKENS = {"admin": "admin", "steering": "steering", "researcher": "r_grant", "site": "site"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("portal-browser"))
    yield w
    w.close()


@pytest.fixture(scope="module")
def browser():
    yield from playwright_chromium()


def signed_in(browser, world: World, role: str):
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{world.server.url}/signin")
    page.get_by_label("API token").fill(world.tokens[TOKENS.get(role, role)])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{world.server.url}/")
    return page, dialogs


@pytest.mark.browser
def test_user_text_never_runs_as_script(world, browser):
    r = world.call("r_grant", "POST", "/api/v1/proposals", {**REQUEST, "title": XSS})
    assert r.status_code == 201, r.text
    code = r.json()["code"]
    admin, dialogs = signed_in(browser, world, "admin")
    admin.goto(f"{world.server.url}/admin/tokens")
    admin.get_by_label("Label").fill(XSS)
    admin.get_by_role("button", name="Issue").click()
    admin.goto(f"{world.server.url}/admin/tokens")
    assert XSS in admin.locator("table").inner_text()  # shown as text
    researcher, rdialogs = signed_in(browser, world, "researcher")
    for page, path in ((researcher, f"/proposals/{code}"), (researcher, "/proposals"),
                       (admin, f"/proposals/{code}"), (admin, "/audit")):
        page.goto(f"{world.server.url}{path}")
        assert page.title() != "pwned", path
        assert page.locator("img[src=x]").count() == 0, path
    assert researcher.get_by_role("heading", level=1).inner_text() == "Proposals"
    assert dialogs == [] and rdialogs == []


@pytest.mark.browser
def test_cross_site_form_post_is_refused(world, browser, tmp_path: Path):
    """A page of another origin on the same host (same site: the SameSite=Strict cookie
    is sent) posts a form with a valid CSRF token: refused by its origin."""
    page, _ = signed_in(browser, world, "admin")
    csrf = page.locator("input[name=csrf_token]").first.get_attribute("value")
    (tmp_path / "attack.html").write_text(
        f'<form method="post" action="{world.server.url}/notifications/read">'
        f'<input name="csrf_token" value="{csrf}"><button>go</button></form>')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://127.0.0.1:{other.server_address[1]}/attack.html")
        with page.expect_navigation() as nav:
            page.click("button")
        assert nav.value.status == 403 and "cross-site" in page.content()
    finally:
        other.shutdown()


@pytest.mark.browser
def test_each_role_main_page(world, browser, tmp_path: Path):
    world.active_proposal("r_grant")  # something on every page
    r = world.call("r_grant", "POST", "/api/v1/proposals", {**REQUEST, "title": "Age and DMN"})
    assert r.status_code == 201, r.text
    for role, path in ROLE_PAGES.items():
        page, _ = signed_in(browser, world, role)
        response = page.goto(f"{world.server.url}{path}")
        assert response.status == 200, (role, path)
        nav = page.get_by_role("navigation", name="Main")
        assert nav.is_visible()
        shot = tmp_path / f"portal-{role}.png"
        page.screenshot(path=str(shot), full_page=False)
        page.keyboard.press("Tab")  # keyboard: the skip link comes first
        assert page.evaluate("document.activeElement.textContent") == "Skip to content"
        assert shot.stat().st_size > 10_000
        publish_screenshot(shot, f"portal-{role}.png")
