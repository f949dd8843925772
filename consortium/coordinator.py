"""The coordinator's state in one object: settings, metadata database and data store."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from consortium import migrations
from consortium.db.session import Database
from consortium.receipts import Notary, Receipt
from consortium.settings import Settings
from consortium.store import ObjectStore

log = logging.getLogger("confed.coordinator")


def _owner_only(settings: Settings) -> None:
    """The root 0700 and the SQLite files 0600, whatever the umask.

    The database file is created 0600 before SQLite opens it, so its ``-wal`` and
    ``-shm`` files (created with the database file's mode) are private too.
    """
    root = settings.root
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    if settings.db_url is not None:
        return
    db_file = Path(settings.database_url.removeprefix("sqlite:///"))
    if not db_file.exists():
        # Never open an existing database file here: closing any descriptor of it
        # drops this process's POSIX locks on it, and SQLite then fails.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(db_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for path in (db_file, *(db_file.with_name(db_file.name + s) for s in ("-wal", "-shm"))):
        if path.exists():
            os.chmod(path, 0o600)


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
        _owner_only(settings)
        if migrate:
            migrations.upgrade(settings.database_url)
        self.db = Database(settings.database_url)
        self.store = ObjectStore(settings.root)
        self.notary = self._open_notary()
        self.db.listen("after_commit", self.notary.after_commit)
        self.db.listen("after_rollback", self.notary.after_rollback)

    def _open_notary(self) -> Notary:
        """The audit signing key; a root without one gets one (and a first checkpoint)."""
        notary, created = Notary.open(self.settings.root, self.settings.checkpoint_path)
        if created:
            log.warning(
                "created the coordinator's audit signing key %s (fingerprint %s)",
                self.settings.root / "keys",
                notary.fingerprint,
            )
            with self.db.session() as session:
                notary.checkpoint_head(session)
        return notary

    def receipt(self, seq: int, entry_hash: str) -> Receipt:
        """A signed receipt for the audit entry ``seq`` (hash ``entry_hash``)."""
        return self.notary.sign(seq, entry_hash)

    @classmethod
    def open(cls, root: Path | str, db_url: str | None = None, migrate: bool = True) -> Coordinator:
        return cls(Settings.load(root, db_url), migrate=migrate)

    def close(self) -> None:
        self.db.dispose()
