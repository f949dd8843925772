"""In-app notifications and the "needs your attention" list.

:func:`sweep` turns the coordinator's state into notifications, one per condition
(votes due, consent windows closing, grants expiring, submissions rejected,
proposal decisions); ``(audience, kind, subject)`` is unique, so a sweep is
idempotent. It runs when a signed-in user opens the dashboard or the feed, and
with ``confed coord notify``. New notifications of members are e-mailed when an
SMTP server is configured (:mod:`consortium.portal.mail`): the e-mail says only
that there is something to read, with the link to sign in.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from consortium.auth import Identity
from consortium.db.base import utcnow
from consortium.db.models import Upload
from consortium.portal.models import Notification
from consortium.portal.render import Page, paginate
from consortium.proposals.members import member_of
from consortium.proposals.models import Consent, Grant, Member, Proposal
from consortium.proposals.review import conflict, votes_of_round
from consortium.proposals.settings import ProposalSettings

GRANT_WARNING_DAYS = 30
DECIDED = ("approved", "rejected", "revisions_requested")


def audiences(session: Session, identity: Identity) -> list[str]:
    """Who the caller is, as notification audiences."""
    out = [f"role:{identity.role}"]
    if identity.role == "site":
        out.append(f"site:{identity.site_id}")
    member = member_of(session, identity)
    if member is not None:
        out.append(f"member:{member.id}")
    return out


def _add(session: Session, found: list, audience: str, kind: str, subject: str, message: str,
         link: str) -> None:
    exists = session.execute(
        select(Notification.id).where(Notification.audience == audience,
                                      Notification.kind == kind, Notification.subject == subject)
    ).first()
    if exists is None:
        row = Notification(audience=audience, kind=kind, subject=subject, message=message,
                           link=link)
        try:
            with session.begin_nested():
                session.add(row)
            found.append(row)
        except IntegrityError:  # a concurrent sweep added it
            pass


def _votes_due(session: Session, settings: ProposalSettings, found: list) -> None:
    open_ = session.execute(
        select(Proposal).where(Proposal.status.in_(("submitted", "under_review")))
    ).scalars().all()
    if not open_:
        return
    steering = session.execute(select(Member).where(Member.role == "steering")).scalars().all()
    for p in open_:
        voted = {v.member_id for v in votes_of_round(session, p)}
        for m in steering:
            if m.id not in voted and conflict(settings, p, m) is None:
                _add(session, found, f"member:{m.id}", "vote_due", f"{p.code}/r{p.review_round}",
                     f"Your vote is due on {p.code}: {p.title}", f"/proposals/{p.code}")


def _consent_open(session: Session, found: list) -> None:
    now = utcnow()
    rows = session.execute(
        select(Proposal).where(Proposal.status.in_(("approved", "active")),
                               Proposal.consent_deadline > now)
    ).scalars().all()
    for p in rows:
        answered = set(session.execute(
            select(Consent.site_id).where(Consent.proposal_id == p.id)).scalars())
        for site in p.sites:
            if site not in answered:
                _add(session, found, f"site:{site}", "consent_open", p.code,
                     f"{p.code} requests your site's data; you may opt out until "
                     f"{p.consent_deadline:%Y-%m-%d %H:%M} UTC", f"/proposals/{p.code}")


def _grants_expiring(session: Session, found: list) -> None:
    now = utcnow()
    soon = now + timedelta(days=GRANT_WARNING_DAYS)
    rows = session.execute(
        select(Grant, Proposal).join(Proposal, Proposal.id == Grant.proposal_id).where(
            Grant.revoked_at.is_(None), Grant.expires_at > now, Grant.expires_at <= soon,
            Proposal.status == "active")
    ).all()
    for grant, p in rows:
        _add(session, found, f"member:{grant.member_id}", "grant_expiring", p.code,
             f"Your grant on {p.code} expires on {grant.expires_at:%Y-%m-%d}",
             f"/proposals/{p.code}")


def _uploads_rejected(session: Session, found: list) -> None:
    rows = session.execute(select(Upload).where(Upload.outcome == "rejected")).scalars().all()
    for u in rows:
        message = f"An upload of site {u.site_id} was rejected ({u.error_code or 'rejected'})"
        for audience in (f"site:{u.site_id}", "role:steering", "role:admin"):
            _add(session, found, audience, "upload_rejected", f"upload:{u.id}", message,
                 f"/sites/{u.site_id}")


def _decisions(session: Session, found: list) -> None:
    rows = session.execute(select(Proposal).where(Proposal.status.in_(DECIDED))).scalars().all()
    for p in rows:
        _add(session, found, f"member:{p.investigator_id}", "decision",
             f"{p.code}/r{p.review_round}/{p.status}",
             f"{p.code} was {p.status.replace('_', ' ')}", f"/proposals/{p.code}")


def sweep(session: Session, settings: ProposalSettings) -> list[Notification]:
    """Add a notification for every condition not yet notified; the new ones."""
    found: list[Notification] = []
    _votes_due(session, settings, found)
    _consent_open(session, found)
    _grants_expiring(session, found)
    _uploads_rejected(session, found)
    _decisions(session, found)
    session.flush()
    return found


def feed(session: Session, identity: Identity, number: int, size: int,
         unread_only: bool = False) -> Page:
    """The caller's notifications, newest first, one page."""
    where = [Notification.audience.in_(audiences(session, identity))]
    if unread_only:
        where.append(Notification.read_at.is_(None))
    total = session.execute(select(func.count()).select_from(Notification).where(*where)).scalar()
    number, pages, offset = paginate(total, number, size)
    rows = session.execute(
        select(Notification).where(*where)
        .order_by(Notification.created_at.desc(), Notification.id.desc())
        .offset(offset).limit(size)
    ).scalars().all()
    return Page(rows, number, pages, total)


def mark_read(session: Session, identity: Identity) -> int:
    """Mark all the caller's notifications read; how many were unread."""
    result = session.execute(
        update(Notification)
        .where(Notification.audience.in_(audiences(session, identity)),
               Notification.read_at.is_(None))
        .values(read_at=utcnow())
    )
    return result.rowcount or 0
