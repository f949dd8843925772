"""Coordinator metadata database: SQLAlchemy 2 typed models and session factory.

Extension point: a new resource adds one module under ``consortium/db/models/``,
imports it in ``consortium/db/models/__init__.py`` and ships an Alembic revision
under ``consortium/migrations/versions/``.
"""

from consortium.db.base import Base
from consortium.db.session import Database, default_sqlite_url

__all__ = ["Base", "Database", "default_sqlite_url"]
