"""The coordinator's state in one object: settings, metadata database and data store."""

from __future__ import annotations

from pathlib import Path

from consortium import migrations
from consortium.db.session import Database
from consortium.settings import Settings
from consortium.store import ObjectStore


class Coordinator:
    """Open handle on a coordinator root.

    Parameters
    ----------
    settings : Settings
        Loaded with :meth:`Settings.load` or built by ``confed coord init``.
    migrate : bool
        Bring the database schema to the newest Alembic revision first.
    """

    def __init__(self, settings: Settings, migrate: bool = True):
        self.settings = settings
        settings.root.mkdir(parents=True, exist_ok=True)
        if migrate:
            migrations.upgrade(settings.database_url)
        self.db = Database(settings.database_url)
        self.store = ObjectStore(settings.root)

    @classmethod
    def open(cls, root: Path | str, db_url: str | None = None, migrate: bool = True) -> Coordinator:
        return cls(Settings.load(root, db_url), migrate=migrate)

    def close(self) -> None:
        self.db.dispose()
