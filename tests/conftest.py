"""Shared fixtures: paths to the consortium's shared reference data and PostgreSQL.

PostgreSQL tests are marked ``postgres`` and run only when ``CONFED_TEST_POSTGRES=1``
(``.ci/run`` sets it). When ``CONFED_POSTGRES_REPORT`` names a file, the number of
PostgreSQL tests that passed is written there so ``.ci/run`` can fail if none ran.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CONFED_SHARED", REPO.parent / "shared")).resolve()
POSTGRES_ENABLED = os.environ.get("CONFED_TEST_POSTGRES") == "1"
POSTGRES_ADMIN_URL = os.environ.get(
    "CONFED_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

_postgres_passed = 0


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared data folder not found at {SHARED} (set CONFED_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def abide_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "abide-pcp-ho111"


@pytest.fixture(scope="session")
def reference_dir(shared_dir: Path) -> Path:
    return shared_dir / "reference"


@pytest.fixture
def postgres_url() -> str:
    """A fresh, empty PostgreSQL schema for one test; dropped afterwards."""
    if not POSTGRES_ENABLED:
        pytest.skip("PostgreSQL tests need CONFED_TEST_POSTGRES=1")
    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = f"{POSTGRES_ADMIN_URL}?options=-csearch_path%3D{schema}"
    yield url
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "postgres_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


def pytest_runtest_logreport(report):
    global _postgres_passed
    if report.when == "call" and report.passed and "postgres" in report.keywords:
        _postgres_passed += 1


def pytest_sessionfinish(session, exitstatus):
    target = os.environ.get("CONFED_POSTGRES_REPORT")
    if target:
        Path(target).write_text(str(_postgres_passed))
