"""Proposal records and their lifecycle state machine.

::

    draft -> submitted -> under_review -> approved -> active -> closed
                              |   |                      \\-> expired
                              |   \\-> rejected
                              \\-> revisions_requested -> submitted

Only the transitions in :data:`TRANSITIONS` are accepted; each one is appended to
the hash-chained audit log in the same transaction as the change.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from consortium import audit
from consortium.db.base import utcnow
from consortium.db.models import Release, SubmissionFile
from consortium.errors import ConfedError
from consortium.proposals.models import Member, Proposal
from consortium.proposals.settings import DUA_VERSION
from consortium.releases import get_release
from consortium.store import ObjectStore

TRANSITIONS: dict[str, tuple[str, ...]] = {
    "draft": ("submitted",),
    "submitted": ("under_review",),
    "under_review": ("approved", "rejected", "revisions_requested"),
    "revisions_requested": ("submitted",),
    "approved": ("active",),
    "active": ("closed", "expired"),
    "rejected": (),
    "closed": (),
    "expired": (),
}
STATUSES = tuple(TRANSITIONS)
EDITABLE = ("draft", "revisions_requested")
FIELDS = (
    "title",
    "abstract",
    "aims",
    "analysis_plan",
    "measures",
    "columns",
    "sites",
    "release_name",
    "duration_months",
)
KEY_COLUMNS = ("subject_key", "site")


def transition(session: Session, proposal: Proposal, new: str, actor: str, **details) -> None:
    """Move ``proposal`` to ``new`` or refuse with 409 naming the allowed moves."""
    old = proposal.status
    if new not in TRANSITIONS.get(old, ()):
        allowed = ", ".join(TRANSITIONS.get(old, ())) or "none (final state)"
        raise ConfedError(
            "invalid_transition",
            f"proposal {proposal.code} is {old}; cannot become {new} (allowed: {allowed})",
            409,
        )
    proposal.status = new
    audit.append(
        session, actor, f"proposal.{new}", f"proposal:{proposal.code}", {"from": old, **details}
    )


def parse_code(code: str | int) -> int:
    """``"P7"``, ``"7"`` or ``7`` -> 7."""
    text = str(code).strip()
    digits = text[1:] if text[:1] in ("P", "p") else text
    if not (digits.isascii() and digits.isdigit()):
        raise ConfedError("bad_proposal_id", f"proposal id {text[:40]!r} is not like P7", 422)
    if len(digits) > 18:  # beyond any id the database holds (and int() of huge strings)
        raise ConfedError("bad_proposal_id", f"proposal id {text[:40]!r} is out of range", 422)
    return int(digits)


def get_proposal(session: Session, code: str | int) -> Proposal:
    """The proposal, or 404 naming it as ``P<id>`` (the answer callers who may not see it get)."""
    pid = parse_code(code)
    proposal = session.get(Proposal, pid)
    if proposal is None:
        raise ConfedError("not_found", f"proposal P{pid} not found", 404)
    return proposal


def release_catalog(
    session: Session, store: ObjectStore, release: Release
) -> dict[str, dict[str, set[str]]]:
    """Per site of ``release``: its phenotype columns and measures, from the manifests."""
    out = {}
    for member in release.members:
        manifest = _manifest(session, store, member.submission_id)
        measures = {f"connectivity:{a}" for a in manifest.get("connectivity", {})}
        measures |= {f"networks:{a}" for a in manifest.get("connectivity", {})}
        measures |= {f"map:{m}" for m in manifest.get("maps", {}) or {}}
        out[member.site_id] = {
            "columns": _subject_columns(session, store, member.submission_id),
            "measures": measures,
        }
    return out


def _subject_columns(session: Session, store: ObjectStore, submission_id: int) -> set[str]:
    """Phenotype columns of a submission, from its subjects table's schema (no data read)."""
    import pyarrow.parquet as pq

    path = _file(session, store, submission_id, "subjects.parquet")
    return set(pq.read_schema(path).names) - {"subject_key"}


def _file(session: Session, store: ObjectStore, submission_id: int, name: str):
    row = session.execute(
        select(SubmissionFile).where(
            SubmissionFile.submission_id == submission_id, SubmissionFile.path == name
        )
    ).scalar_one_or_none()
    if row is None:
        raise ConfedError("no_file", f"submission {submission_id} has no {name}", 500)
    return store.path(row.sha256)


def _manifest(session: Session, store: ObjectStore, submission_id: int) -> dict:
    row = session.execute(
        select(SubmissionFile).where(
            SubmissionFile.submission_id == submission_id, SubmissionFile.path == "manifest.json"
        )
    ).scalar_one_or_none()
    if row is None:
        raise ConfedError("no_manifest", f"submission {submission_id} has no manifest.json", 500)
    return json.loads(store.path(row.sha256).read_text())


def check_request(
    session: Session,
    store: ObjectStore,
    release_name: str,
    measures: Sequence[str],
    columns: Sequence[str],
    sites: Sequence[str],
) -> list[str]:
    """Validate requested data against the release; returns the site list (empty = all)."""
    release = get_release(session, release_name)
    catalog = release_catalog(session, store, release)
    chosen = list(sites) or sorted(catalog)
    unknown_sites = [s for s in chosen if s not in catalog]
    if unknown_sites:
        raise ConfedError(
            "unknown_site",
            f"sites not in release {release_name}: {', '.join(unknown_sites)} "
            f"(release has {', '.join(sorted(catalog))})",
            422,
        )
    for field, wanted, key in (("measures", measures, "measures"), ("columns", columns, "columns")):
        if len(set(wanted)) != len(wanted):
            raise ConfedError(
                "duplicate", f"{field}: an entry is listed twice: {list(wanted)}", 422
            )
        for site in chosen:
            missing = [w for w in wanted if w not in catalog[site][key]]
            if missing:
                raise ConfedError(
                    f"unknown_{field[:-1]}",
                    f"{field}: {', '.join(missing)} not available from site {site} in release "
                    f"{release_name} (available: {', '.join(sorted(catalog[site][key]))})",
                    422,
                )
    if any(c in KEY_COLUMNS for c in columns):
        raise ConfedError(
            "unknown_column", "columns: subject_key and site are always included, not requested"
        )
    if not measures and not columns:
        raise ConfedError("empty_request", "request at least one measure or column", 422)
    return chosen


def create_proposal(
    session: Session, store: ObjectStore, investigator: Member, actor: str, data: dict
) -> Proposal:
    sites = check_request(
        session, store, data["release_name"], data["measures"], data["columns"], data["sites"]
    )
    proposal = Proposal(
        **{k: data[k] for k in FIELDS if k != "sites"},
        sites=sites,
        investigator_id=investigator.id,
        institution=investigator.institution,
        status="draft",
        review_round=0,
    )
    session.add(proposal)
    session.flush()
    audit.append(
        session, actor, "proposal.create", f"proposal:{proposal.code}", {"title": proposal.title}
    )
    return proposal


def update_proposal(
    session: Session, store: ObjectStore, proposal: Proposal, actor: str, changes: dict
) -> Proposal:
    if proposal.status not in EDITABLE:
        raise ConfedError(
            "not_editable",
            f"proposal {proposal.code} is {proposal.status}; only a draft or a proposal with "
            "revisions requested can be changed (a grant is never widened)",
            409,
        )
    merged = {k: changes.get(k, getattr(proposal, k)) for k in FIELDS}
    if {"measures", "columns", "sites", "release_name"} & set(changes):
        merged["sites"] = check_request(
            session,
            store,
            merged["release_name"],
            merged["measures"],
            merged["columns"],
            merged["sites"],
        )
    for k, v in merged.items():
        setattr(proposal, k, v)
    if changes:
        proposal.dua_accepted_at = None  # changed terms of use need a fresh acceptance
        proposal.dua_accepted_by = None
        proposal.dua_version = None
    audit.append(
        session, actor, "proposal.update", f"proposal:{proposal.code}", {"fields": sorted(changes)}
    )
    return proposal


def accept_dua(
    session: Session, proposal: Proposal, member: Member, version: str, actor: str
) -> Proposal:
    if version != DUA_VERSION:
        raise ConfedError(
            "bad_dua_version",
            f"data-use agreement version {version!r} is not the current one ({DUA_VERSION})",
            422,
        )
    if proposal.status not in EDITABLE:
        raise ConfedError("not_editable", f"proposal {proposal.code} is {proposal.status}", 409)
    proposal.dua_version = version
    proposal.dua_accepted_by = f"{member.name} <{member.email}>"
    proposal.dua_accepted_at = utcnow()
    audit.append(
        session, actor, "proposal.dua_accept", f"proposal:{proposal.code}", {"version": version}
    )
    return proposal


def submit(session: Session, proposal: Proposal, actor: str) -> Proposal:
    if proposal.dua_accepted_at is None:
        raise ConfedError(
            "dua_required",
            f"proposal {proposal.code}: accept the data-use agreement (version {DUA_VERSION}) "
            "before submitting",
            409,
        )
    transition(session, proposal, "submitted", actor)
    proposal.submitted_at = utcnow()
    return proposal


def add_months(when: datetime, months: int) -> datetime:
    return when + timedelta(days=round(30.44 * months))
