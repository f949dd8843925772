"""Engine and session factory for SQLite (default) and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker


def default_sqlite_url(root: Path) -> str:
    """The embedded default database: a SQLite file inside the coordinator root."""
    return f"sqlite:///{(Path(root) / 'coordinator.sqlite3').resolve()}"


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            # Let SQLAlchemy emit BEGIN itself (below) instead of pysqlite's lazy BEGIN.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            # Every transaction takes the write lock up front: audit appends make nearly
            # every request a writer, and deferred transactions would deadlock on upgrade.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


class Database:
    """One engine plus a session factory.

    Parameters
    ----------
    url : str
        SQLAlchemy URL, e.g. ``sqlite:////srv/coord/coordinator.sqlite3`` or
        ``postgresql+psycopg://user@host/db``.
    """

    def __init__(self, url: str):
        self.url = url
        self.engine = _make_engine(url)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session inside one transaction: committed on success, rolled back on error."""
        with self._factory() as session, session.begin():
            yield session

    def listen(self, identifier: str, fn) -> None:
        """Register a session event (e.g. ``"after_commit"``) on this database's sessions."""
        event.listen(self._factory, identifier, fn)

    def dispose(self) -> None:
        self.engine.dispose()
