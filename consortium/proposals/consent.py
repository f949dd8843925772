"""Site consent: each requested site may opt out within a window after approval.

An opt-out removes the site's data from everything the proposal receives from then
on (exports and remote analyses re-read consents on every use). The proposal can be
activated when the window has closed or every requested site has answered.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from consortium import audit
from consortium.db.base import utcnow
from consortium.errors import ConfedError
from consortium.proposals.lifecycle import transition
from consortium.proposals.models import Consent, Proposal

CONSENT_DECISIONS = ("consent", "opt_out")


def record_consent(
    session: Session, proposal: Proposal, site_id: str, decision: str, comment: str, actor: str
) -> Consent:
    if decision not in CONSENT_DECISIONS:
        raise ConfedError("bad_decision", f"decision must be one of {CONSENT_DECISIONS}", 422)
    if site_id not in proposal.sites:
        raise ConfedError(
            "forbidden", f"proposal {proposal.code} does not request data of site {site_id}", 403
        )
    if proposal.status not in ("approved", "active") or proposal.consent_deadline is None:
        raise ConfedError(
            "consent_not_open",
            f"proposal {proposal.code} is {proposal.status}; consent opens at approval",
            409,
        )
    if utcnow() > proposal.consent_deadline:
        raise ConfedError(
            "consent_window_closed",
            f"the opt-out window of {proposal.code} closed at {proposal.consent_deadline}",
            409,
        )
    row = session.get(Consent, (proposal.id, site_id))
    if row is None:
        row = Consent(proposal_id=proposal.id, site_id=site_id)
        session.add(row)
    row.decision, row.comment, row.decided_by, row.decided_at = decision, comment, actor, utcnow()
    session.flush()
    audit.append(
        session, actor, f"proposal.{decision}", f"proposal:{proposal.code}", {"site": site_id}
    )
    return row


def consents(session: Session, proposal: Proposal) -> dict[str, str]:
    rows = session.execute(select(Consent).where(Consent.proposal_id == proposal.id)).scalars()
    return {r.site_id: r.decision for r in rows}


def activate(session: Session, proposal: Proposal, actor: str) -> Proposal:
    if proposal.status == "approved":
        answered = consents(session, proposal)
        pending = [s for s in proposal.sites if s not in answered]
        if pending and utcnow() <= proposal.consent_deadline:
            raise ConfedError(
                "consent_pending",
                f"proposal {proposal.code}: sites {', '.join(pending)} have not answered and "
                f"the opt-out window is open until {proposal.consent_deadline}",
                409,
            )
    transition(session, proposal, "active", actor)
    proposal.activated_at = utcnow()
    return proposal


def close(session: Session, proposal: Proposal, actor: str) -> Proposal:
    transition(session, proposal, "closed", actor)
    proposal.ended_at = utcnow()
    return proposal
