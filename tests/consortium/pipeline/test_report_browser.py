"""The report of the synthetic release, laid out by headless Chromium.

Runs when chromium is installed (required with ``CONFED_TEST_BROWSER=1``). With
``CONFED_SCREENSHOT_DIR`` set, the screenshot is copied there: that is how
``docs/img/report.png`` is made (never by hand).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from consortium.report import render_report
from consortium.report.render import SECTION_IDS

SECTIONS = [s for s in SECTION_IDS if s != "prediction"]


def _chromium() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CONFED_TEST_BROWSER") == "1":
            pytest.fail("CONFED_TEST_BROWSER=1 but no chromium on PATH")
        pytest.skip("chromium not installed (set CONFED_TEST_BROWSER=1 to require it)")
    return browser


@pytest.mark.browser
def test_every_section_is_visible_and_in_the_navigation(results, tmp_path: Path) -> None:
    browser = _chromium()
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
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for section in SECTIONS:
        assert f'data-visible-{section}="yes"' in dom.stdout, section
    assert f'data-nav="{" ".join(SECTIONS)}"' in dom.stdout
    # The screenshot is of the report itself (no probe).
    screenshot = tmp_path / "report.png"
    shot = subprocess.run([*base, f"--screenshot={screenshot}", "--window-size=1280,2400",
                           "--hide-scrollbars", report.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    png = screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1280, 2400) and len(png) > 50_000  # not a blank page
    target = os.environ.get("CONFED_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(target) / "report.png")
