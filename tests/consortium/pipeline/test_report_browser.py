"""The report of the synthetic release, laid out by headless Chromium.

Runs when chromium is installed (required with ``CONFED_TEST_BROWSER=1``). With
``CONFED_SCREENSHOT_DIR`` set, the screenshot is copied there: that is how
``docs/img/report.png`` is made (never by hand).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consortium.report import render_report
from consortium.report.render import SECTION_IDS
from tests.helpers.browser import (
    chromium_path,
    dump_dom,
    headless_command,
    publish_screenshot,
    take_screenshot,
)

SECTIONS = [s for s in SECTION_IDS if s != "prediction"]


@pytest.mark.browser
def test_every_section_is_visible_and_in_the_navigation(results, tmp_path: Path) -> None:
    browser = chromium_path()
    report = render_report([results[k] for k in ("dmn", "networks", "edges", "voxels")],
                           tmp_path / "source.html", title="Synthetic release: analysis report")
    # A probe recording, in the DOM, whether each section is laid out and visible and
    # which sections the navigation links to.
    probe = ("<script>window.addEventListener('load', () => { for (const id of "
             f"{json.dumps(SECTIONS)}) {{ const el = document.getElementById(id); "
             "const s = el && getComputedStyle(el); const ok = el && el.offsetHeight > 0 && "
             "s.display !== 'none' && s.visibility !== 'hidden'; "
             "document.body.setAttribute('data-visible-' + id, ok ? 'yes' : 'no'); } "
             "const nav = [...document.querySelectorAll('nav a')].map(a => "
             "a.getAttribute('href').slice(1)).join(' '); "
             "document.body.setAttribute('data-nav', nav); });</script>")
    page = tmp_path / "report.html"
    page.write_text(report.read_text().replace("</body>", probe + "</body>"))
    base = headless_command(browser, tmp_path / "profile")
    dom = dump_dom(base, page.as_uri())
    for section in SECTIONS:
        assert f'data-visible-{section}="yes"' in dom, section
    assert f'data-nav="{" ".join(SECTIONS)}"' in dom
    # The screenshot is of the report itself (no probe).
    screenshot = tmp_path / "report.png"
    size = take_screenshot(base, report.as_uri(), screenshot)
    assert size == (1280, 2400) and screenshot.stat().st_size > 50_000  # not a blank page
    publish_screenshot(screenshot, "report.png")
