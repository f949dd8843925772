"""Portal configuration, kept in ``<root>/portal.json`` (optional; defaults below)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from consortium.errors import ConfedError

PORTAL_SETTINGS_FILE = "portal.json"


@dataclass
class PortalSettings:
    """Sessions, sign-in links and optional e-mail of the portal.

    Parameters
    ----------
    idle_seconds : int
        A session unused for this long is ended (the user signs in again).
    link_hours : int
        Lifetime of a one-time sign-in link.
    public_url : str
        Address of the portal as users reach it (put in sign-in links and e-mails);
        empty: the address the request came to.
    smtp_host, smtp_port, smtp_from : str, int, str
        SMTP server for notification e-mails; no e-mail is sent when ``smtp_host``
        is empty. E-mails hold no data, only a link to sign in.
    page_size : int
        Rows per page of every list.
    """

    idle_seconds: int = 1800
    link_hours: int = 24
    public_url: str = ""
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_from: str = "confed@localhost"
    page_size: int = 50

    @classmethod
    def load(cls, root: Path | str) -> PortalSettings:
        """Read ``root/portal.json``; defaults when it does not exist."""
        path = Path(root) / PORTAL_SETTINGS_FILE
        if not path.is_file():
            return cls()
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfedError("bad_settings", f"{path} is not valid JSON: {exc}") from exc
        unknown = set(stored) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfedError("bad_settings", f"{path}: unknown keys {sorted(unknown)}")
        return cls(**stored)

    def save(self, root: Path | str) -> Path:
        path = Path(root) / PORTAL_SETTINGS_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path
