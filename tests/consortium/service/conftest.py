"""Fixtures: site key pairs S01..S20 and small signed bundle archives, made once a session.

The server and ``db_url`` fixtures are in ``tests/consortium/conftest.py``; the helpers
they wrap are in ``tests/helpers``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.archives import resign as do_resign
from tests.helpers.archives import tar_dir
from tests.helpers.bundles import synthetic_bundle
from tests.helpers.keys import make_keys


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="session")
def site_keys(keys_dir):
    """Key pairs of sites S01..S20, made once per session."""
    return {f"S{i:02d}": make_keys(keys_dir, f"S{i:02d}") for i in range(1, 21)}


@pytest.fixture(scope="session")
def small_tars(tmp_path_factory, site_keys) -> dict[str, Path]:
    """One small signed bundle archive per site S01..S20, built once per session."""
    folder = tmp_path_factory.mktemp("bundles")
    out = {}
    for i, (site, (private, _)) in enumerate(sorted(site_keys.items())):
        b = synthetic_bundle(folder / site, site, private, seed=i)
        out[site] = tar_dir(b, folder / f"{site}.tar")
    return out


@pytest.fixture
def spoil(tmp_path, site_keys):
    """Build a spoiled copy of a bundle: ``spoil(site, edit=..., resign=..., extra=...)``."""
    counter = iter(range(10_000))

    def _make(site="S01", edit=None, resign=None, extra=(), signer=None):
        n = next(counter)
        b = synthetic_bundle(
            tmp_path / f"spoiled{n}" / site,
            site,
            site_keys[signer or site][0],
            seed=100 + n,
            edit=edit,
        )
        if resign:
            do_resign(b, site_keys[signer or site][0], **resign)
        return tar_dir(b, tmp_path / f"spoiled{n}.tar", list(extra))

    return _make
