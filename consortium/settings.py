"""Coordinator settings, persisted in ``<root>/coordinator.json`` by ``confed coord init``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from consortium.db.session import default_sqlite_url
from consortium.errors import ConfedError
from consortium.settings_file import read_settings_file, write_settings_file

SETTINGS_FILE = "coordinator.json"
CHECKPOINT_FILE = "audit-checkpoints.jsonl"


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
    max_json_bytes : int
        Largest request body of every route but the bundle upload and the federated
        result route (413 beyond it).
    max_federated_message_bytes : int
        Largest body of ``POST /federated/tasks/{id}/result`` (a site's signed
        message). Per-feature messages grow with the features: about 11 bytes per
        value, e.g. 1.2 MB for the 12,720 edges of Dosenbach-160 with a 5-covariate
        design; 64 MiB allows about 6 million values (some 600,000 voxels).
    auth_fail_limit, auth_fail_window : int
        After this many refused tokens (401) from one client address within this
        many seconds, that address gets 429 until the window has passed.
    checkpoint_file : str or None
        Append-only file of signed audit checkpoints; None means
        ``<root>/audit-checkpoints.jsonl``. Point it at a WORM or remote mount
        to keep it out of reach of whoever can write the database.
    disk_low_bytes : int
        ``/health`` reports the disk as ``low`` when the root's file system has
        fewer free bytes than this.
    scheduler : str or None
        ``dask.distributed`` scheduler address on which analysis jobs run their
        permutations (None: dask's local scheduler). Only this configured address
        is used: an API request cannot name another one.
    """

    root: Path
    db_url: str | None = None
    max_upload_bytes: int = 2 * 1024**3
    min_per_group: int = 10
    token_days: int = 365
    max_json_bytes: int = 1024**2
    max_federated_message_bytes: int = 64 * 1024**2
    auth_fail_limit: int = 10
    auth_fail_window: int = 60
    checkpoint_file: str | None = None
    disk_low_bytes: int = 1024**3
    scheduler: str | None = None

    @property
    def database_url(self) -> str:
        return self.db_url or default_sqlite_url(self.root)

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.checkpoint_file) if self.checkpoint_file else self.root / CHECKPOINT_FILE

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
        stored = read_settings_file(path, {f.name for f in fields(cls)} - {"root"})
        settings = cls(root=root, **stored)
        if db_url:
            settings.db_url = db_url
        return settings

    def save(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        data = {k: v for k, v in asdict(self).items() if k != "root"}
        # may hold a database password
        return write_settings_file(self.root / SETTINGS_FILE, data, mode=0o600)
