"""Fixtures for the coordinator tests: the database backend and a running server."""

from __future__ import annotations

import pytest

from tests.helpers.server import backend_url, serving


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request) -> str | None:
    """None (the SQLite file under the root) or a fresh PostgreSQL schema."""
    return backend_url(request.param, lambda: request.getfixturevalue("postgres_url"))


@pytest.fixture
def server(tmp_path, db_url):
    """A coordinator root ``tmp_path / "coord"`` served on loopback, on each backend."""
    with serving(tmp_path / "coord", db_url) as srv:
        yield srv
