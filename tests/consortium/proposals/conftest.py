"""Fixtures: three ABIDE sites as signed bundles (the server is in tests/consortium)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.archives import tar_dir
from tests.helpers.bundles import build_abide_bundle

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
