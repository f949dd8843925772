"""Steering-committee review: votes with comments, a quorum-and-majority rule, conflicts.

Rule (configurable in :class:`~consortium.proposals.settings.ProposalSettings`): once at
least ``quorum`` members have voted in the current round, the decision that strictly
more than ``majority`` of those votes agree on (approve, reject, revise) is taken;
until then, or without such a majority, the proposal stays under review.

Conflicts of interest: the proposer never votes on their own proposal; with
``coi_same_institution`` (the default) nobody from the proposer's institution does.
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select
from sqlalchemy.orm import Session

from consortium.db.base import utcnow
from consortium.errors import ConfedError
from consortium.proposals.grants import create_grant
from consortium.proposals.lifecycle import transition
from consortium.proposals.models import Member, Proposal, Vote
from consortium.proposals.settings import ProposalSettings

DECISIONS = {"approve": "approved", "reject": "rejected", "revise": "revisions_requested"}


def open_review(session: Session, proposal: Proposal, actor: str) -> Proposal:
    transition(session, proposal, "under_review", actor)
    proposal.review_round += 1
    return proposal


def conflict(settings: ProposalSettings, proposal: Proposal, member: Member) -> str | None:
    if member.id == proposal.investigator_id:
        return f"member {member.id} is the proposer of {proposal.code}"
    same = member.institution.strip().casefold() == proposal.institution.strip().casefold()
    if settings.coi_same_institution and same:
        return f"member {member.id} is from the proposing institution {proposal.institution!r}"
    return None


def votes_of_round(session: Session, proposal: Proposal) -> list[Vote]:
    query = select(Vote).where(
        Vote.proposal_id == proposal.id, Vote.review_round == proposal.review_round
    )
    return list(session.execute(query.order_by(Vote.id)).scalars())


def decide(settings: ProposalSettings, decisions: list[str]) -> str | None:
    """The decision the rule takes on these votes, or None (keep reviewing)."""
    if len(decisions) < settings.quorum:
        return None
    decision, count = Counter(decisions).most_common(1)[0]
    return decision if count > settings.majority * len(decisions) else None


def cast_vote(
    session: Session,
    settings: ProposalSettings,
    proposal: Proposal,
    member: Member,
    decision: str,
    comment: str,
    actor: str,
) -> Vote:
    if decision not in DECISIONS:
        raise ConfedError("bad_decision", f"decision must be one of {sorted(DECISIONS)}", 422)
    why = conflict(settings, proposal, member)
    if why:
        raise ConfedError("conflict_of_interest", f"conflict of interest: {why}", 403)
    if proposal.status == "submitted":
        open_review(session, proposal, actor)
    if proposal.status != "under_review":
        raise ConfedError(
            "not_under_review",
            f"proposal {proposal.code} is {proposal.status}, not under review",
            409,
        )
    if any(v.member_id == member.id for v in votes_of_round(session, proposal)):
        raise ConfedError(
            "already_voted", f"member {member.id} already voted on {proposal.code} this round", 409
        )
    vote = Vote(
        proposal_id=proposal.id,
        review_round=proposal.review_round,
        member_id=member.id,
        decision=decision,
        comment=comment,
    )
    session.add(vote)
    session.flush()
    from consortium import audit

    audit.append(
        session,
        actor,
        "proposal.vote",
        f"proposal:{proposal.code}",
        {"member": member.id, "decision": decision, "round": proposal.review_round},
    )
    outcome = decide(settings, [v.decision for v in votes_of_round(session, proposal)])
    if outcome is not None:
        _apply(session, settings, proposal, DECISIONS[outcome], actor)
    return vote


def _apply(
    session: Session, settings: ProposalSettings, proposal: Proposal, status: str, actor: str
) -> None:
    from datetime import timedelta

    transition(session, proposal, status, actor, rule="quorum_majority")
    proposal.decided_at = utcnow()
    if status == "approved":
        proposal.consent_deadline = proposal.decided_at + timedelta(
            days=settings.consent_window_days
        )
        create_grant(session, proposal, actor)
