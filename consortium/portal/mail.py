"""Notification e-mail through the SMTP server of ``PortalSettings`` (optional).

An e-mail never carries data: no proposal title, no site, no numbers. It says that
the portal holds a notification and gives the sign-in address.
"""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Iterable
from email.message import EmailMessage

from sqlalchemy.orm import Session

from consortium.db.base import utcnow
from consortium.portal.models import Notification
from consortium.portal.settings import PortalSettings
from consortium.proposals.models import Member

log = logging.getLogger("confed.coordinator")
SUBJECT = "confed: you have a new notification"


def message_for(settings: PortalSettings, to: str) -> EmailMessage:
    """The only e-mail the portal sends: no data, a link to sign in."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = settings.smtp_from, to, SUBJECT
    url = settings.public_url.rstrip("/") + "/signin"
    msg.set_content(
        "There is something for you in the confed portal.\n\n"
        f"Sign in to read it: {url}\n\n"
        "This message holds no data; everything is behind the sign-in.\n"
    )
    return msg


def deliver(session: Session, settings: PortalSettings, rows: Iterable[Notification]) -> int:
    """E-mail the members concerned by ``rows`` (once per member); how many were sent."""
    if not settings.smtp_host:
        return 0
    members = {}
    for row in rows:
        if row.audience.startswith("member:") and row.emailed_at is None:
            members.setdefault(int(row.audience.split(":", 1)[1]), []).append(row)
    sent = 0
    if not members:
        return 0
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=30) as smtp:
        for member_id, notes in members.items():
            member = session.get(Member, member_id)
            if member is None or not member.email:
                continue
            smtp.send_message(message_for(settings, member.email))
            for note in notes:
                note.emailed_at = utcnow()
            sent += 1
    return sent
