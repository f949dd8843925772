"""Ingest of site bundles: safe extraction, verification, value checks, storage.

The same path serves HTTP uploads and offline imports (``confed coord import``):

1. the upload is streamed to a temporary file with a size limit (413 beyond it);
2. the tar is extracted into a private temporary directory, refusing ``..``,
   absolute paths, links, device files and anything but regular files and folders;
3. the manifest's site id must be the uploading site's, and its Ed25519
   signature must verify with the key registered for that site (403 otherwise);
4. ``sites.bundle.read_bundle`` checks format version, file set, sizes and checksums;
5. the site-coordinator contract (:mod:`sites.contract`, the same checks the site
   ran before signing): allowed columns, codes, plausible ranges, pseudonyms, QC
   codes, no free text; then finite connectivity and maps; groups smaller than
   ``min_per_group`` are flagged, not refused;
6. files are staged, fsynced, re-hashed and renamed into the object store, and the
   submission becomes visible in one database transaction (with its audit entry),
   superseding the site's previous submission.

An identical bundle (same bundle hash) returns the existing submission, so a
site may retry an upload safely.

Steps 1-2 live in :mod:`consortium.ingest_stream`, steps 3-5 in
:mod:`consortium.ingest_checks`; this module holds step 6 (registration of a
verified bundle, and the record of every upload and refusal) and the entry
points, and re-exports the public names of the other two.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from consortium import audit
from consortium.coordinator import Coordinator
from consortium.db.models import Site, StoredObject, Submission, SubmissionFile, Upload
from consortium.errors import ConfedError
from consortium.ingest_checks import MAX_ABS_Z, check_identity, check_values, group_flags
from consortium.ingest_stream import (
    ARCHIVE_STATUS,
    WRITE_BATCH,
    ChunkPipe,
    disk_full_error,
    is_disk_full,
    manifest_site_id,
    receive_and_unpack,
    safe_extract,
)
from consortium.store import StagedObject
from sites.bundle import BundleError, read_bundle

__all__ = [
    "ARCHIVE_STATUS",
    "MAX_ABS_Z",
    "PAUSE_ENV",
    "PAUSE_MARKER",
    "PENDING_FILE",
    "WRITE_BATCH",
    "ChunkPipe",
    "IngestResult",
    "check_values",
    "disk_full_error",
    "flush_pending",
    "group_flags",
    "ingest_archive",
    "ingest_unpacked",
    "is_disk_full",
    "manifest_site_id",
    "receive_and_unpack",
    "record_refusal",
    "record_upload",
    "safe_extract",
]

#: Test hook: seconds to sleep after all objects are staged (crash tests kill it then).
PAUSE_ENV = "CONFED_TEST_INGEST_PAUSE"
PAUSE_MARKER = "ingest-paused"
#: Refusals that could not be recorded (database or disk full), one JSON object a line.
PENDING_FILE = "pending-uploads.jsonl"

log = logging.getLogger("confed.ingest")


@dataclass
class IngestResult:
    submission: Submission
    created: bool


# --------------------------------------------------------------------------- database


def _insert_objects(session: Session, staged: list[StagedObject]) -> None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    rows = {s.sha256: {"sha256": s.sha256, "size": s.size} for s in staged}
    for row in rows.values():
        stmt = insert(StoredObject).values(**row).on_conflict_do_nothing()
        session.execute(stmt)


def record_upload(
    coord: Coordinator,
    site_id: str,
    actor: str,
    size: int,
    outcome: str,
    error: ConfedError | None = None,
    bundle_hash: str | None = None,
    submission_id: int | None = None,
) -> None:
    with coord.db.session() as session:
        session.add(
            Upload(
                site_id=site_id,
                size=size,
                outcome=outcome,
                error_code=error.code if error else None,
                message=error.message if error else "",
                bundle_hash=bundle_hash,
                submission_id=submission_id,
            )
        )
        details = {"size": size, "outcome": outcome}
        if error:
            details["error"] = error.code
        audit.append(session, actor, f"submission.{outcome}", f"site:{site_id}", details)


_pending_lock = threading.Lock()
_pending_memory: list[dict] = []


def record_refusal(
    coord: Coordinator, site_id: str, actor: str, size: int, err: ConfedError
) -> None:
    """Record a refused upload; if that fails (disk or database full), keep it pending.

    A pending refusal goes to ``<root>/pending-uploads.jsonl`` (or, if even that
    cannot be written, stays in memory) and is recorded by :func:`flush_pending`
    at the start of the next ingest.
    """
    entry = {"site_id": site_id, "actor": actor, "size": size, "code": err.code}
    entry |= {"message": err.message, "status": err.status}
    try:
        record_upload(coord, site_id, actor, size, "rejected", err)
    except (SQLAlchemyError, OSError) as exc:
        log.error("could not record refused upload of site %s (%s); kept pending", site_id, exc)
        _keep_pending(coord, entry)


def _keep_pending(coord: Coordinator, entry: dict) -> None:
    with _pending_lock:
        try:
            with open(coord.settings.root / PENDING_FILE, "a") as fh:
                fh.write(json.dumps(entry) + "\n")
        except OSError:
            _pending_memory.append(entry)


def flush_pending(coord: Coordinator) -> int:
    """Record the refusals kept pending; return how many were recorded."""
    path = coord.settings.root / PENDING_FILE
    with _pending_lock:
        entries = list(_pending_memory)
        _pending_memory.clear()
        if path.is_file():
            entries += [json.loads(line) for line in path.read_text().splitlines() if line]
        done = 0
        try:
            for entry in entries:
                err = ConfedError(entry["code"], entry["message"], entry["status"])
                record_upload(
                    coord, entry["site_id"], entry["actor"], entry["size"], "rejected", err
                )
                done += 1
        except (SQLAlchemyError, OSError) as exc:
            log.error("pending upload records not recorded yet (%s)", exc)
            _pending_memory.extend(entries[done:])
        path.unlink(missing_ok=True)
        return done


def _existing(session: Session, bundle_hash: str, site_id: str) -> Submission | None:
    sub = session.execute(
        select(Submission).where(Submission.bundle_hash == bundle_hash)
    ).scalar_one_or_none()
    if sub is not None and sub.site_id != site_id:
        raise ConfedError(
            "site_mismatch", f"bundle {bundle_hash[:16]}... belongs to site {sub.site_id}", 403
        )
    return sub


def _pause_for_tests(coord: Coordinator) -> None:
    seconds = os.environ.get(PAUSE_ENV)
    if seconds:
        (coord.store.tmp_dir / PAUSE_MARKER).write_text(str(os.getpid()))
        time.sleep(float(seconds))


def _commit(
    coord: Coordinator,
    site_id: str,
    actor: str,
    bundle,
    manifest: dict,
    rel: dict[str, StagedObject],
    group_counts: dict[str, int],
    size: int,
) -> IngestResult:
    flags = group_flags(group_counts, coord.settings.min_per_group)
    try:
        with coord.db.session() as session:
            # Lock the site row so two bundles of one site cannot both become current.
            session.execute(select(Site).where(Site.id == site_id).with_for_update()).scalar_one()
            existing = _existing(session, bundle.bundle_hash, site_id)
            if existing is not None:
                raise _Duplicate(existing.id)
            _insert_objects(session, list(rel.values()))
            sub = Submission(
                site_id=site_id,
                bundle_hash=bundle.bundle_hash,
                format_version=str(manifest["format_version"]),
                n_subjects=len(bundle.subjects),
                subject_keys=bundle.subjects["subject_key"].astype(str).tolist(),
                group_counts=group_counts,
                flags=flags,
                received_by=actor,
            )
            session.add(sub)
            session.flush()
            for path, s in rel.items():
                session.add(
                    SubmissionFile(submission_id=sub.id, path=path, sha256=s.sha256, size=s.size)
                )
            previous = session.execute(
                select(Submission).where(
                    Submission.site_id == site_id,
                    Submission.superseded_by_id.is_(None),
                    Submission.id != sub.id,
                )
            ).scalars()
            superseded = []
            for old in previous:
                old.superseded_by_id = sub.id
                superseded.append(old.id)
            session.add(
                Upload(
                    site_id=site_id,
                    size=size,
                    outcome="accepted",
                    bundle_hash=bundle.bundle_hash,
                    submission_id=sub.id,
                )
            )
            audit.append(
                session,
                actor,
                "submission.accepted",
                f"submission:{sub.id}",
                {
                    "site": site_id,
                    "bundle_hash": bundle.bundle_hash,
                    "n_subjects": sub.n_subjects,
                    "flags": flags,
                    "superseded": superseded,
                },
            )
        return IngestResult(sub, True)
    except IntegrityError:
        # A concurrent upload of the same bundle won the race.
        with coord.db.session() as session:
            existing = _existing(session, bundle.bundle_hash, site_id)
            if existing is None:
                raise
            raise _Duplicate(existing.id) from None


class _Duplicate(Exception):
    def __init__(self, submission_id: int):
        self.submission_id = submission_id


def _unlisted(bundle) -> list[str]:
    return [
        n
        for n in ("manifest.json", "manifest.sig", "signature.json")
        if (bundle.path / n).is_file()
    ]


# --------------------------------------------------------------------------- entry point


def ingest_archive(
    coord: Coordinator, tar_path: Path, site_id: str, actor: str, name: str | None = None
) -> IngestResult:
    """Validate and store the bundle archive ``tar_path`` uploaded by ``site_id``.

    A bundle whose hash is already stored is answered as a duplicate only once
    its files have been verified against the manifest (and so against the
    stored objects).

    Raises
    ------
    ConfedError
        With code and HTTP status (507 when the disk fills up); every refusal is
        also recorded as an upload of the site with its reason, and audited,
        after the temporary files are removed.
    """
    name = name or tar_path.name
    workdir = coord.store.temp_path("ingest")

    def unpack() -> Path:
        workdir.mkdir()
        return safe_extract(tar_path, workdir, coord.settings.max_upload_bytes, name)

    return _ingest_recorded(coord, unpack, workdir, site_id, actor, name, tar_path.stat().st_size)


def ingest_unpacked(
    coord: Coordinator,
    bundle_dir: Path,
    workdir: Path,
    site_id: str,
    actor: str,
    name: str,
    size: int,
) -> IngestResult:
    """:func:`ingest_archive` for a bundle already unpacked under ``workdir`` (in ``tmp/``).

    Used by the upload route, which unpacks the archive while it is received
    (:func:`receive_and_unpack`). ``workdir`` is removed.
    """
    return _ingest_recorded(coord, lambda: bundle_dir, workdir, site_id, actor, name, size)


def _ingest_recorded(
    coord: Coordinator,
    unpack: Callable[[], Path],
    workdir: Path,
    site_id: str,
    actor: str,
    name: str,
    size: int,
) -> IngestResult:
    flush_pending(coord)
    with coord.db.session() as session:
        site = session.get(Site, site_id)
        if site is None:
            shutil.rmtree(workdir, ignore_errors=True)
            raise ConfedError("not_found", f"site {site_id} not found", 404)
        session.expunge(site)
    try:
        return _ingest(coord, unpack, workdir, site, actor, name, size)
    except _Duplicate as dup:
        with coord.db.session() as session:
            sub = session.get(Submission, dup.submission_id)
            session.expunge(sub)
        record_upload(
            coord,
            site_id,
            actor,
            size,
            "duplicate",
            bundle_hash=sub.bundle_hash,
            submission_id=sub.id,
        )
        return IngestResult(sub, False)
    except ConfedError as err:
        record_refusal(coord, site_id, actor, size, err)
        raise


def _ingest(
    coord: Coordinator,
    unpack: Callable[[], Path],
    workdir: Path,
    site: Site,
    actor: str,
    name: str,
    size: int,
) -> IngestResult:
    """The checks and the storage; temporary files are gone when this returns or raises."""
    staged: list[StagedObject] = []
    try:
        bundle_dir = unpack()
        manifest_bytes, manifest = check_identity(bundle_dir, site)
        bundle_hash = hashlib.sha256(manifest_bytes).hexdigest()
        try:
            bundle = read_bundle(
                bundle_dir, verify=True, public_key_pem=site.public_key_pem.encode()
            )
        except BundleError as exc:
            raise ConfedError("bad_bundle", f"{name}: {exc}", 422) from exc
        with coord.db.session() as session:
            existing = _existing(session, bundle_hash, site.id)
            if existing is not None:  # the same files as stored: verified just above
                raise _Duplicate(existing.id)
        try:
            group_counts = check_values(bundle)
        except BundleError as exc:
            raise ConfedError("bad_bundle", f"{name}: {exc}", 422) from exc
        paths = sorted(bundle.files) + _unlisted(bundle)
        for path in paths:
            staged.append(coord.store.adopt(bundle_dir / path, bundle.files.get(path)))
        _pause_for_tests(coord)
        for s in staged:
            coord.store.commit(s)
        rel = dict(zip(paths, staged, strict=True))
        result = _commit(coord, site.id, actor, bundle, manifest, rel, group_counts, size)
        coord.store.view(
            bundle_hash, {f.path: f.sha256 for f in _files(coord, result.submission.id)}
        )
        return result
    except (OSError, OperationalError) as exc:
        if is_disk_full(exc):
            raise disk_full_error(exc, "unpacking and storing the bundle") from exc
        raise
    finally:
        coord.store.discard(staged)
        shutil.rmtree(workdir, ignore_errors=True)


def _files(coord: Coordinator, submission_id: int) -> list[SubmissionFile]:
    with coord.db.session() as session:
        rows = (
            session.execute(
                select(SubmissionFile).where(SubmissionFile.submission_id == submission_id)
            )
            .scalars()
            .all()
        )
        for r in rows:
            session.expunge(r)
        return list(rows)
