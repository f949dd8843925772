"""Data releases: named, immutable sets of exact submission versions.

A release records one submission per site (the current one when it is created)
and a release hash over the sorted ``(site, bundle hash)`` pairs and the excluded
subject keys, so any published number can be traced to the exact bundles behind it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from consortium import audit
from consortium.db.models import Release, ReleaseSubmission, Site, Submission
from consortium.errors import ConfedError
from sites.contract import ContractError, check_name

RELEASE_HASH_VERSION = "confed-release-v1"


def release_hash(members: Iterable[tuple[str, str]], excluded_subjects: Iterable[str]) -> str:
    """SHA-256 over the sorted (site id, bundle hash) pairs and excluded subject keys."""
    payload = {
        "version": RELEASE_HASH_VERSION,
        "submissions": sorted([site, bundle] for site, bundle in members),
        "excluded_subjects": sorted(set(excluded_subjects)),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def current_submissions(session: Session, sites: Sequence[str] | None = None) -> list[Submission]:
    """The newest, not superseded submission of each requested site."""
    query = select(Submission).where(Submission.superseded_by_id.is_(None))
    subs = {s.site_id: s for s in session.execute(query).scalars()}
    if sites is None:
        return [subs[k] for k in sorted(subs)]
    out = []
    for site_id in sites:
        if session.get(Site, site_id) is None:
            raise ConfedError("not_found", f"site {site_id} not found", 404)
        if site_id not in subs:
            raise ConfedError("no_submission", f"site {site_id} has no accepted submission", 422)
        out.append(subs[site_id])
    return sorted(out, key=lambda s: s.site_id)


def create_release(
    session: Session,
    name: str,
    actor: str,
    sites: Sequence[str] | None = None,
    exclude_subjects: Iterable[str] = (),
) -> Release:
    """Freeze the current submissions of ``sites`` (default all) into release ``name``."""
    try:
        check_name(name, "release name")  # the rule of the API schema, for the CLI too
    except ContractError as err:
        raise ConfedError("bad_name", str(err), 422) from err
    if session.execute(select(Release.id).where(Release.name == name)).first() is not None:
        raise ConfedError("conflict", f"release {name} already exists; releases are immutable", 409)
    if sites is not None and len(set(sites)) != len(sites):
        raise ConfedError("bad_request", f"sites listed more than once: {sorted(sites)}")
    members = current_submissions(session, sites)
    if not members:
        raise ConfedError("no_submission", "no accepted submissions to release", 422)
    excluded = sorted(set(exclude_subjects))
    known = {k for s in members for k in s.subject_keys}
    unknown = [k for k in excluded if k not in known]
    if unknown:
        raise ConfedError(
            "unknown_subject",
            f"excluded subject(s) not in any released submission: {', '.join(unknown[:5])}",
            422,
        )
    atlases = check_atlases(members)
    digest = release_hash([(s.site_id, s.bundle_hash) for s in members], excluded)
    release = Release(name=name, release_hash=digest, created_by=actor, excluded_subjects=excluded)
    session.add(release)
    session.flush()
    for s in members:
        session.add(
            ReleaseSubmission(
                release_id=release.id,
                submission_id=s.id,
                site_id=s.site_id,
                bundle_hash=s.bundle_hash,
            )
        )
    session.flush()
    audit.append(
        session,
        actor,
        "release.create",
        f"release:{name}",
        {
            "release_hash": digest,
            "submissions": {s.site_id: s.bundle_hash for s in members},
            "n_excluded": len(excluded),
            "atlases": atlases,
        },
    )
    session.refresh(release)
    return release


def submission_atlases(submission: Submission) -> dict[str, str]:
    """Atlas name -> SHA-256 of the atlas table (``atlases/<name>.tsv``) a submission carries."""
    return {
        f.path[len("atlases/") : -len(".tsv")]: f.sha256
        for f in submission.files
        if f.path.startswith("atlases/") and f.path.endswith(".tsv")
    }


def check_atlases(members: Sequence[Submission]) -> dict[str, str]:
    """Pin one definition per atlas name; refuse sites whose definitions differ.

    Returns
    -------
    dict
        Atlas name -> SHA-256 of its table, for the audit record.

    Raises
    ------
    ConfedError
        ``atlas_mismatch`` (422) naming the atlas, both sites and both hashes.
    """
    pinned: dict[str, tuple[str, str]] = {}
    for submission in members:
        for name, digest in sorted(submission_atlases(submission).items()):
            site, first = pinned.setdefault(name, (submission.site_id, digest))
            if digest != first:
                raise ConfedError(
                    "atlas_mismatch",
                    f"atlas {name!r} differs between sites: site {site} has definition "
                    f"{first} and site {submission.site_id} has {digest}; the sites must "
                    "use the same atlas TSV (same name, same content) and resubmit",
                    422,
                )
    return {name: digest for name, (_, digest) in sorted(pinned.items())}


def list_releases(session: Session) -> list[Release]:
    query = select(Release).options(selectinload(Release.members)).order_by(Release.created_at)
    return list(session.execute(query).scalars())


def get_release(session: Session, name: str) -> Release:
    query = select(Release).options(selectinload(Release.members)).where(Release.name == name)
    release = session.execute(query).scalar_one_or_none()
    if release is None:
        raise ConfedError("not_found", f"release {name} not found", 404)
    return release


def recompute_release_hash(release: Release) -> str:
    return release_hash(
        [(m.site_id, m.bundle_hash) for m in release.members], release.excluded_subjects
    )


def read_exclusion_file(path: Path) -> list[str]:
    """Subject keys, one per line; blank lines and ``#`` comments are ignored."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfedError("bad_file", f"{path}: cannot read exclusion list ({exc})") from exc
    keys = []
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if len(line) != 64 or any(c not in "0123456789abcdef" for c in line):
            raise ConfedError(
                "bad_file", f"{path}:{n}: {line!r} is not a subject key (64 lowercase hex)"
            )
        keys.append(line)
    return keys


class _ExcludingBundle:
    """A read-only view of a bundle without some subjects (rows dropped everywhere).

    Excluded subjects stay in ``qc`` with ``included=False`` and the reason code
    ``excluded_by_release`` (also in ``qc_reasons``).
    """

    def __init__(self, bundle: Any, excluded: set[str]):
        self._bundle = bundle
        self._keep = ~bundle.subjects["subject_key"].isin(excluded).to_numpy()
        self._excluded = excluded

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bundle, name)

    @property
    def subjects(self) -> pd.DataFrame:
        return self._bundle.subjects[self._keep].reset_index(drop=True)

    @property
    def qc(self) -> pd.DataFrame:
        qc = self._bundle.qc.copy()
        hit = qc["subject_key"].isin(self._excluded) & qc["included"].astype(bool)
        qc.loc[hit, "included"] = False
        qc.loc[hit, "reason_codes"] = "excluded_by_release"
        return qc

    @property
    def qc_reasons(self) -> pd.DataFrame:
        released = self._bundle.subjects["subject_key"]
        keys = released[~self._keep].tolist()
        added = pd.DataFrame(
            {
                "subject_key": pd.Series(keys, dtype=object),
                "code": "excluded_by_release",
                "field": "",
                "value": np.nan,
                "threshold": np.nan,
            }
        )
        return pd.concat([self._bundle.qc_reasons, added], ignore_index=True)

    def connectivity(self, atlas_name: str) -> np.ndarray:
        return np.asarray(self._bundle.connectivity(atlas_name))[self._keep]

    def network_summaries(self, atlas_name: str) -> pd.DataFrame:
        return self._bundle.network_summaries(atlas_name)[self._keep].reset_index(drop=True)

    def maps(self, metric: str):
        mask, values = self._bundle.maps(metric)
        return mask, np.asarray(values)[self._keep]

    def map_columns(self, metric: str, start: int, stop: int) -> np.ndarray:
        return self._bundle.map_columns(metric, start, stop)[self._keep]


def open_release(root: Path | str, name: str, db_url: str | None = None):
    """The data of release ``name`` as a :class:`consortium.dataset.Dataset`.

    Every bundle is re-verified (checksums of all files) when it is opened, from
    the write-once object store.

    Parameters
    ----------
    root : path
        Coordinator root.
    name : str
        Release name.
    db_url : str or None
        Database URL when it is not the one stored in the root's settings.
    """
    from consortium.coordinator import Coordinator
    from consortium.dataset import Dataset

    coord = Coordinator.open(root, db_url)
    try:
        with coord.db.session() as session:
            release = get_release(session, name)
            bundles = [
                open_submission(coord, session, session.get(Submission, m.submission_id))
                for m in release.members
            ]
            excluded = set(release.excluded_subjects)
            if excluded:
                bundles = [_ExcludingBundle(b, excluded) for b in bundles]
            audit.append(session, "library", "release.open", f"release:{name}", {})
            return Dataset.from_bundles(
                bundles, release_name=release.name, release_hash=release.release_hash
            )
    finally:
        coord.close()


def open_submission(coord, session: Session, submission: Submission):
    """Open a stored submission as a verified ``sites.bundle.Bundle``.

    Every file is read from the object store's view of the bundle, must resolve
    inside it, be the object itself and match the SHA-256 of its database row
    (hashed once per process while the file is unchanged); the manifest must be
    the submitted one (its hash is the bundle hash) and list those same files.

    Raises
    ------
    ConfedError
        ``store_corrupted`` (500) naming the file, when any check fails.
    """
    from sites.bundle import BundleError, read_bundle

    files = {f.path: f.sha256 for f in submission.files}
    view = coord.store.verified_view(submission.bundle_hash, files)
    try:
        bundle = read_bundle(view, verify=False)
    except BundleError as exc:
        raise _corrupted(submission, str(exc)) from exc
    if bundle.bundle_hash != submission.bundle_hash:
        raise _corrupted(submission, "manifest.json is not the submitted manifest")
    for path, sha in bundle.files.items():
        if files.get(path) != sha:
            raise _corrupted(submission, f"{path}: not the file the manifest lists")
    return bundle


def _corrupted(submission: Submission, problem: str) -> ConfedError:
    return ConfedError(
        "store_corrupted",
        f"submission {submission.id} (site {submission.site_id}, bundle "
        f"{submission.bundle_hash[:16]}...) in the object store is corrupted: {problem}; "
        "run `confed coord fsck`",
        500,
    )
