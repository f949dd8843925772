"""Portal configuration, kept in ``<root>/portal.json`` (optional; defaults below)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from consortium.settings_file import OptionalSettingsFile

PORTAL_SETTINGS_FILE = "portal.json"


@dataclass
class PortalSettings(OptionalSettingsFile):
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

    FILE: ClassVar[str] = PORTAL_SETTINGS_FILE
