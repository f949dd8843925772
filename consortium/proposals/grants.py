"""Grants: what an approved proposal's investigator may receive, and until when.

Pseudonyms are re-keyed per proposal with HMAC-SHA256 under a random 256-bit key
that the coordinator keeps in the grant row and never hands out, so the subject
identifiers of two proposals cannot be linked with each other or with the release.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from consortium import audit
from consortium.db.base import utcnow
from consortium.errors import ConfedError
from consortium.proposals.lifecycle import add_months, transition
from consortium.proposals.models import Consent, Grant, Member, Proposal
from consortium.releases import get_release


def create_grant(session: Session, proposal: Proposal, actor: str) -> Grant:
    """Freeze the approved request into a grant; expires ``duration_months`` after approval."""
    release = get_release(session, proposal.release_name)
    grant = Grant(
        proposal_id=proposal.id,
        member_id=proposal.investigator_id,
        measures=list(proposal.measures),
        columns=list(proposal.columns),
        sites=list(proposal.sites),
        release_name=release.name,
        release_hash=release.release_hash,
        pseudonym_key=secrets.token_hex(32),
        expires_at=add_months(utcnow(), proposal.duration_months),
    )
    session.add(grant)
    session.flush()
    audit.append(
        session,
        actor,
        "grant.create",
        f"proposal:{proposal.code}",
        {
            "grant": grant.id,
            "measures": grant.measures,
            "columns": grant.columns,
            "sites": grant.sites,
            "release_hash": grant.release_hash,
            "expires_at": grant.expires_at.isoformat(),
        },
    )
    return grant


def grant_of(session: Session, proposal: Proposal) -> Grant:
    grant = session.execute(
        select(Grant).where(Grant.proposal_id == proposal.id)
    ).scalar_one_or_none()
    if grant is None:
        raise ConfedError("no_grant", f"proposal {proposal.code} has no grant", 404)
    return grant


def opted_out(session: Session, proposal: Proposal) -> set[str]:
    rows = session.execute(
        select(Consent.site_id).where(
            Consent.proposal_id == proposal.id, Consent.decision == "opt_out"
        )
    ).scalars()
    return set(rows)


def effective_sites(session: Session, proposal: Proposal, grant: Grant) -> list[str]:
    """The grant's sites minus those that opted out (re-read on every use)."""
    out = [s for s in grant.sites if s not in opted_out(session, proposal)]
    if not out:
        raise ConfedError(
            "no_sites", f"proposal {proposal.code}: every requested site opted out", 409
        )
    return out


def require_usable_grant(session: Session, proposal: Proposal, member: Member) -> Grant:
    """The grant, if ``member`` holds it and it is active, unexpired and not revoked."""
    if proposal.investigator_id != member.id:
        raise ConfedError(
            "forbidden", f"proposal {proposal.code} is not a proposal of member {member.id}", 403
        )
    grant = session.execute(
        select(Grant).where(Grant.proposal_id == proposal.id)
    ).scalar_one_or_none()
    if grant is None or grant.member_id != member.id:
        raise ConfedError("no_grant", f"proposal {proposal.code} has no grant for you", 403)
    if grant.revoked_at is not None:
        raise ConfedError(
            "grant_revoked", f"the grant of {proposal.code} was revoked at {grant.revoked_at}", 403
        )
    if grant.expires_at <= utcnow():
        raise ConfedError(
            "grant_expired", f"the grant of {proposal.code} expired at {grant.expires_at}", 403
        )
    if proposal.status != "active":
        raise ConfedError(
            "grant_inactive",
            f"proposal {proposal.code} is {proposal.status}; data flows only while it is active",
            403,
        )
    return grant


def expire_due(session: Session, actor: str = "system") -> list[str]:
    """Move active proposals whose grant has expired to ``expired`` (audited)."""
    rows = session.execute(
        select(Proposal, Grant)
        .join(Grant, Grant.proposal_id == Proposal.id)
        .where(Proposal.status == "active", Grant.expires_at <= utcnow())
    ).all()
    for proposal, grant in rows:
        transition(session, proposal, "expired", actor, grant=grant.id)
        proposal.ended_at = utcnow()
    return [p.code for p, _ in rows]


def revoke_grant(session: Session, proposal: Proposal, actor: str) -> Grant:
    grant = grant_of(session, proposal)
    if grant.revoked_at is None:
        grant.revoked_at = utcnow()
        audit.append(session, actor, "grant.revoke", f"proposal:{proposal.code}", {})
    return grant


def pseudonym(key_hex: str, subject_key: str) -> str:
    """The proposal-specific pseudonym of one subject key."""
    return hmac.new(bytes.fromhex(key_hex), subject_key.encode(), hashlib.sha256).hexdigest()


def effective_strata(grant: Grant, age_bands: list[float]) -> dict[str, list]:
    """The grant's strata: as fixed at activation, else the settings' default age bands."""
    from consortium.proposals.strata import default_strata

    if grant.strata is not None:
        return {c: list(v) for c, v in grant.strata.items()}
    return default_strata(age_bands, grant.columns)


def fix_strata(
    session: Session, proposal: Proposal, spec: dict | None, age_bands: list[float], actor: str
) -> Grant:
    """Fix the strata of ``proposal``'s grant at activation (given, or the default); audited."""
    from consortium.proposals.strata import default_strata, normalize

    grant = grant_of(session, proposal)
    if spec is None:
        grant.strata = default_strata(age_bands, grant.columns)
    else:
        grant.strata = normalize(spec, grant.columns)
    audit.append(
        session,
        actor,
        "grant.strata",
        f"proposal:{proposal.code}",
        {"grant": grant.id, "strata": grant.strata, "default": spec is None},
    )
    return grant
