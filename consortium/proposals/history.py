"""Each researcher's history of released subject sets, across all their proposals.

Pseudonyms differ per proposal, so the history identifies a subject by
HMAC-SHA256 under a key held per member (``members.history_key``, made on first
use, never handed out) over the site and the release's subject key: the same
person gets the same id in every proposal of that member, and ids of different
members cannot be compared. The check itself is
:func:`consortium.proposals.disclosure.check_history`.
"""

from __future__ import annotations

import secrets

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from consortium.proposals.disclosure import check_history
from consortium.proposals.grants import pseudonym
from consortium.proposals.models import Member, ReleasedSet


def _locked_member(session: Session, member_id: int) -> Member:
    """The member row, locked until commit (PostgreSQL ``FOR UPDATE``; SQLite transactions
    already hold the write lock), so two queries of one member are checked one at a time."""
    query = select(Member).where(Member.id == member_id).with_for_update()
    member = session.execute(query).scalar_one()
    if member.history_key is None:
        member.history_key = secrets.token_hex(32)
        session.flush()
    return member


def subject_groups(frame: pd.DataFrame, keys: list[str], key_hex: str) -> dict[str, list[str]]:
    """``"site/dx"`` -> sorted history ids of the analysed rows.

    ``frame`` carries the row positions of the scoped data in ``_row``; ``keys`` are
    the scoped data's subject keys.
    """
    out: dict[str, list[str]] = {}
    for site, dx, row in zip(frame["site"], frame["dx"], frame["_row"], strict=True):
        ident = pseudonym(key_hex, f"{site}/{keys[int(row)]}")
        out.setdefault(f"{site}/{dx}", []).append(ident)
    return {group: sorted(ids) for group, ids in sorted(out.items())}


def check_and_hold(
    session: Session, member_id: int, frame: pd.DataFrame, keys: list[str], minimum: int
) -> dict[str, list[str]]:
    """Lock the member, check the new set against their history; returns its groups.

    Raises :class:`~consortium.proposals.disclosure.DisclosureRefused` (rule
    ``differencing``) when the set may not be released.
    """
    member = _locked_member(session, member_id)
    groups = subject_groups(frame, keys, member.history_key)
    rows = session.execute(select(ReleasedSet).where(ReleasedSet.member_id == member_id))
    history = {r.id: {g: set(ids) for g, ids in r.groups.items()} for r in rows.scalars()}
    check_history({g: set(ids) for g, ids in groups.items()}, history, minimum)
    return groups


def record(
    session: Session, member_id: int, proposal_id: int, query_id: int, groups: dict
) -> ReleasedSet:
    """Add a released set to the member's history (same transaction as the release)."""
    row = ReleasedSet(
        member_id=member_id,
        proposal_id=proposal_id,
        query_id=query_id,
        n_subjects=sum(len(ids) for ids in groups.values()),
        groups=groups,
    )
    session.add(row)
    session.flush()
    return row
