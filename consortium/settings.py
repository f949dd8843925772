"""Coordinator settings, persisted in ``<root>/coordinator.json`` by ``confed coord init``."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from consortium.db.session import default_sqlite_url
from consortium.errors import ConfedError

SETTINGS_FILE = "coordinator.json"


@dataclass
class Settings:
    """Where the coordinator keeps its data and the limits it enforces.

    Parameters
    ----------
    root : Path
        Data root: object store, bundle views, temporary files, settings, and the
        SQLite database unless ``db_url`` names another one.
    db_url : str or None
        SQLAlchemy URL of the metadata database; None means the SQLite file in root.
    max_upload_bytes : int
        Uploads larger than this are refused with 413 while streaming.
    min_per_group : int
        Sites with fewer cases or controls than this get the ``small_group`` flag
        (REST-meta-MDD dropped sites with fewer than 10 patients or 10 controls).
    token_days : int
        Default lifetime of new API tokens.
    """

    root: Path
    db_url: str | None = None
    max_upload_bytes: int = 2 * 1024**3
    min_per_group: int = 10
    token_days: int = 365

    @property
    def database_url(self) -> str:
        return self.db_url or default_sqlite_url(self.root)

    @classmethod
    def load(cls, root: Path | str, db_url: str | None = None) -> Settings:
        """Read ``root/coordinator.json``; ``db_url`` overrides the stored URL."""
        root = Path(root).resolve()
        path = root / SETTINGS_FILE
        if not path.is_file():
            raise ConfedError(
                "not_initialised",
                f"{path} not found: run `confed coord init --root {root}` first",
            )
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfedError("bad_settings", f"{path} is not valid JSON: {exc}") from exc
        known = {f.name for f in fields(cls)} - {"root"}
        unknown = set(stored) - known
        if unknown:
            raise ConfedError("bad_settings", f"{path}: unknown keys {sorted(unknown)}")
        settings = cls(root=root, **stored)
        if db_url:
            settings.db_url = db_url
        return settings

    def save(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        data = {k: v for k, v in asdict(self).items() if k != "root"}
        path = self.root / SETTINGS_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.chmod(tmp, 0o600)  # may hold a database password
        os.replace(tmp, path)
        return path
