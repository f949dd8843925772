"""Fixtures: three ABIDE sites as signed bundles, and a coordinator server."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.consortium.service.bundles import tar_dir
from tests.consortium.service.conftest import Server
from tests.factories import build_abide_bundle

ABIDE_SITES = ("KKI", "STANFORD", "UM_2")


@pytest.fixture(scope="session")
def abide_bundles(abide_dir, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Per site: bundle dir, tar, public key and site config (real site agent runs)."""
    folder = tmp_path_factory.mktemp("abide-bundles")
    out = {}
    for site in ABIDE_SITES:
        bundle = build_abide_bundle(abide_dir, site, folder / site)
        out[site] = {
            "bundle": bundle,
            "tar": tar_dir(bundle, folder / f"{site}.tar"),
            "public_key": folder / f".{site}-site" / "site_ed25519.pub.pem",
            "config": folder / f".{site}-site.toml",
        }
    return out


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request) -> str | None:
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return None


@pytest.fixture
def server(tmp_path, db_url):
    srv = Server(tmp_path / "coord", db_url).start()
    yield srv
    srv.kill(signal.SIGTERM)
