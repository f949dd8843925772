"""Headless Chromium for the browser tests (Debian's ``chromium``; no browser download).

A test needing a browser calls :func:`chromium_path`: it fails when
``CONFED_TEST_BROWSER=1`` and no chromium is on ``PATH``, and skips otherwise.
Pages are rendered either by the command line (:func:`dump_dom`,
:func:`take_screenshot`) or through Playwright (:func:`playwright_chromium`).
With ``CONFED_SCREENSHOT_DIR`` set, :func:`publish_screenshot` copies a screenshot
there (how ``docs/img/*.png`` are made, never by hand).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chromium_path() -> str:
    """Path of the chromium executable; fail or skip the test when there is none.

    Returns
    -------
    str
        ``chromium`` or ``chromium-browser`` found on ``PATH``.
    """
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CONFED_TEST_BROWSER") == "1":
            pytest.fail("CONFED_TEST_BROWSER=1 but no chromium on PATH")
        pytest.skip("chromium not installed (set CONFED_TEST_BROWSER=1 to require it)")
    return browser


def headless_command(browser: str, profile: Path) -> list[str]:
    """Command line of a quiet headless chromium using the profile folder ``profile``."""
    return [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}"]


def dump_dom(base: list[str], url: str) -> str:
    """The DOM of ``url`` once loaded, as serialised by ``chromium --dump-dom``.

    Parameters
    ----------
    base : list of str
        A :func:`headless_command`.
    url : str
        Page to load.
    """
    dom = subprocess.run([*base, "--virtual-time-budget=5000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout


def take_screenshot(base: list[str], url: str, out: Path) -> tuple[int, int]:
    """Save a 1280x2400 screenshot of ``url`` to ``out``; return its (width, height).

    Parameters
    ----------
    base : list of str
        A :func:`headless_command`.
    url : str
        Page to load.
    out : Path
        PNG file written.
    """
    shot = subprocess.run([*base, f"--screenshot={out}", "--window-size=1280,2400",
                           "--hide-scrollbars", url],
                          capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and out.is_file(), shot.stderr[-2000:]
    png = out.read_bytes()
    assert png[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def publish_screenshot(shot: Path, name: str) -> None:
    """Copy ``shot`` to ``$CONFED_SCREENSHOT_DIR/name`` when that variable is set."""
    target = os.environ.get("CONFED_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / name)


def playwright_chromium() -> Iterator[Any]:
    """Yield a Playwright ``Browser`` on the system chromium (body of a fixture).

    Fails or skips as :func:`chromium_path` does; skips when Playwright is not installed.
    """
    executable = chromium_path()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()
