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
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import json
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from consortium import audit
from consortium.coordinator import Coordinator
from consortium.db.models import Site, StoredObject, Submission, SubmissionFile, Upload
from consortium.errors import ConfedError
from consortium.store import StagedObject
from sites import contract
from sites.archive import ArchiveError, read_archive_manifest, unpack_archive, unpack_stream
from sites.bundle import (
    MANIFEST,
    SIGNATURE,
    SUPPORTED_VERSIONS,
    BundleError,
    check_contract,
    read_bundle,
    verify_manifest_signature,
)

#: Test hook: seconds to sleep after all objects are staged (crash tests kill it then).
PAUSE_ENV = "CONFED_TEST_INGEST_PAUSE"
PAUSE_MARKER = "ingest-paused"
#: Uploaded chunks are written to disk in a worker thread, this many bytes at a time.
WRITE_BATCH = 512 * 1024
#: Refusals that could not be recorded (database or disk full), one JSON object a line.
PENDING_FILE = "pending-uploads.jsonl"

log = logging.getLogger("confed.ingest")

MAX_ABS_Z = 20.0  # |atanh(r)| = 20 means |r| = 1 - 8e-18: a copy of a region, not a correlation


@dataclass
class IngestResult:
    submission: Submission
    created: bool


def _rejected(code: str, message: str, status: int = 422) -> ConfedError:
    return ConfedError(code, message, status)


# --------------------------------------------------------------------------- upload stream


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` means the file system (or the database on it) is full."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, OperationalError) and "full" in str(exc.orig).lower()


def disk_full_error(exc: BaseException, what: str) -> ConfedError:
    """507: no space left on the coordinator's disk while doing ``what``."""
    reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200]
    return ConfedError(
        "insufficient_storage",
        f"the coordinator's disk is full: no space left while {what} ({reason}); nothing "
        "was stored, try again later",
        507,
    )


class ChunkPipe(io.RawIOBase):
    """Bytes handed from the event loop to one reading thread, through a bounded queue.

    The event loop offers batches without ever blocking (:meth:`offer` returns
    False while the queue is full, and the loop sleeps briefly instead of
    waiting on a thread), and :meth:`close_input` ends the stream; the thread
    reads the pipe as a file. :meth:`abort` ends the stream at once.
    """

    def __init__(self, max_batches: int = 16) -> None:
        super().__init__()
        self._queue: queue.Queue[bytes | None] = queue.Queue(max_batches)
        self._current = memoryview(b"")
        self._aborted = threading.Event()
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._current:
            if self._eof:
                return 0
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                self._eof = self._aborted.is_set()
                continue
            if item is None:
                self._eof = True
                return 0
            self._current = memoryview(item)
        n = min(len(buffer), len(self._current))
        buffer[:n] = self._current[:n]
        self._current = self._current[n:]
        return n

    def offer(self, data: bytes | None) -> bool:
        """Queue ``data`` (``None``: end of stream) if there is room; never blocks."""
        try:
            self._queue.put_nowait(data)
            return True
        except queue.Full:
            return False

    def abort(self) -> None:
        """End the stream now: the reader sees end of data after what it holds."""
        self._aborted.set()


async def _hand_over(pipe: ChunkPipe, data: bytes | None, reader: asyncio.Future) -> None:
    """Queue ``data`` for the reader, yielding to the event loop while the queue is full."""
    while not reader.done() and not pipe.offer(data):
        await asyncio.sleep(0.002)


def _start_reader(pipe: ChunkPipe, dest: Path, name: str) -> asyncio.Future:
    """Unpack from ``pipe`` in a thread of its own; its outcome as a future of this loop.

    A dedicated thread, not the shared executor: a reader waits for data that only
    the event loop supplies, and many concurrent uploads must never use up the
    threads that other work needs.
    """
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future = loop.create_future()

    def settle(result: Path | None, error: BaseException | None) -> None:
        if outcome.done():
            return
        if error is not None:
            outcome.set_exception(error)
        else:
            outcome.set_result(result)

    def run() -> None:
        try:
            result = unpack_stream(pipe, dest, name)
        except BaseException as exc:  # handed to the event loop, raised there
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="confed-unpack", daemon=True).start()
    return outcome


async def receive_and_unpack(
    chunks: AsyncIterator[bytes], dest: Path, limit: int, declared: int | None, name: str
) -> tuple[Path, int]:
    """Unpack an upload stream into ``dest`` while it is received.

    A thread unpacks the archive (:func:`sites.archive.unpack_stream`) from
    batches of :data:`WRITE_BATCH` bytes that the event loop hands over as they
    arrive, so the archive is never stored whole, the event loop never waits for
    the disk, and a refusal (a compressed archive, too many members) stops the
    upload at once.

    Returns
    -------
    (Path, int)
        The bundle root and the number of bytes received.

    Raises
    ------
    ConfedError
        413 beyond ``limit``, 400 for an empty body or a refused archive (with
        its own code), 507 when the disk is full.
    """
    if declared is not None and declared > limit:
        raise _rejected(
            "too_large", f"upload of {declared} bytes exceeds the limit of {limit} bytes", 413
        )
    pipe = ChunkPipe()
    reader = _start_reader(pipe, dest, name)
    size = 0
    try:
        batch: list[bytes] = []
        pending = 0
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise _rejected("too_large", f"upload exceeds the limit of {limit} bytes", 413)
            batch.append(chunk)
            pending += len(chunk)
            if pending >= WRITE_BATCH:
                if reader.done():
                    break  # refused already: no need to receive the rest
                await _hand_over(pipe, b"".join(batch), reader)
                batch, pending = [], 0
        if size == 0:
            raise _rejected("empty_upload", "the upload is empty", 400)
        if batch:
            await _hand_over(pipe, b"".join(batch), reader)
        await _hand_over(pipe, None, reader)
        return await reader, size
    except ArchiveError as exc:
        raise _archive_refusal(exc) from exc
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(exc, "receiving and unpacking the upload") from exc
        raise
    finally:
        pipe.abort()
        await asyncio.wait([reader])
        if not reader.cancelled():
            reader.exception()  # retrieved; the error raised above is the one to report


# --------------------------------------------------------------------------- tar extraction


#: The HTTP status of each archive refusal (:class:`sites.archive.ArchiveError` codes).
ARCHIVE_STATUS = {
    "bad_archive": 400,
    "unsafe_archive": 400,
    "compressed_archive": 415,
    "too_many_files": 413,
    "too_large": 413,
    "bad_bundle": 422,
}


def _archive_refusal(exc: ArchiveError) -> ConfedError:
    return _rejected(exc.code, exc.message, ARCHIVE_STATUS[exc.code])


def safe_extract(tar_path: Path, dest: Path, max_bytes: int, archive_name: str) -> Path:
    """Check and unpack a bundle archive into ``dest``; return ``dest`` (the bundle root).

    :func:`sites.archive.unpack_archive` checks every header and the manifest
    before anything is written, and writes at most the declared sizes.
    """
    try:
        unpack_archive(tar_path, dest, max_bytes, archive_name)
    except ArchiveError as exc:
        raise _archive_refusal(exc) from exc
    except FileExistsError as exc:
        raise _rejected(
            "bad_archive", f"{archive_name}: tar member listed twice ({exc.filename})", 400
        ) from exc
    return dest


def manifest_site_id(tar_path: Path) -> str:
    """The ``site_id`` a bundle archive's manifest claims (for offline imports)."""
    try:
        manifest = read_archive_manifest(tar_path)
    except ArchiveError as exc:
        raise _archive_refusal(exc) from exc
    site_id = manifest.get("site_id")
    if not isinstance(site_id, str):
        raise _rejected("bad_bundle", f"{tar_path}: {MANIFEST} has no site_id")
    return site_id


# --------------------------------------------------------------------------- checks


def _check_identity(bundle_dir: Path, site: Site) -> tuple[bytes, dict]:
    manifest_bytes = (bundle_dir / MANIFEST).read_bytes()
    try:
        manifest = contract.parse_manifest(manifest_bytes)
    except contract.ContractError as exc:
        raise _rejected("bad_bundle", str(exc)) from exc
    claimed = manifest.get("site_id")
    if claimed != site.id:
        raise _rejected(
            "site_mismatch",
            f"{MANIFEST}: bundle claims site {claimed!r} but was uploaded by site {site.id}",
            403,
        )
    sig_path = bundle_dir / SIGNATURE
    if not sig_path.is_file():
        raise _rejected("signature_invalid", f"{SIGNATURE}: missing", 403)
    try:
        verify_manifest_signature(
            manifest_bytes, sig_path.read_bytes(), site.public_key_pem.encode()
        )
    except BundleError as exc:
        raise _rejected(
            "signature_invalid",
            f"{exc} (not the key registered for site {site.id})",
            403,
        ) from exc
    version = manifest.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        raise _rejected(
            "unsupported_format_version",
            f"{MANIFEST}: format version {version!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_VERSIONS)})",
        )
    return manifest_bytes, manifest


def _check_finite(name: str, values: np.ndarray, keys: list[str], bound: float | None) -> None:
    bad = ~np.isfinite(values)
    if bound is not None:
        with np.errstate(invalid="ignore"):
            bad |= np.abs(values) > bound
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        row = int(rows[0])
        col = int(np.flatnonzero(bad[row])[0])
        what = "non-finite" if not np.isfinite(values[row, col]) else f"|value| > {bound}"
        raise _rejected(
            "bad_values",
            f"{name}: {what} value {values[row, col]!r} for subject {keys[row][:16]}... "
            f"(column {col}; {len(rows)} subject(s) affected)",
        )


def check_values(bundle) -> dict[str, int]:
    """Contract and value checks beyond the bundle format; returns group counts by label.

    Raises
    ------
    ConfedError
        ``contract_violation`` (422) naming the file and column when a table,
        column or value breaks :mod:`sites.contract`; ``bad_values`` (422) for
        non-finite or implausibly large connectivity and map values.
    """
    try:
        check_contract(bundle)
    except contract.ContractError as exc:
        raise _rejected("contract_violation", str(exc)) from exc
    subjects: pd.DataFrame = bundle.subjects
    if len(subjects) == 0:
        raise _rejected(
            "no_subjects",
            f"site {bundle.manifest.get('site_id')}: the bundle has 0 included subjects "
            "(subjects.parquet is empty); every subject was excluded by QC at the site",
        )
    labels = bundle.manifest["dx_labels"]
    key_list = subjects["subject_key"].astype(str).tolist()
    for atlas in sorted(bundle.manifest.get("connectivity", {})):
        edges = bundle.connectivity(atlas)
        _check_finite(f"connectivity_{atlas}.parquet", edges, key_list, MAX_ABS_Z)
        summaries = bundle.network_summaries(atlas).to_numpy(dtype=float)
        _check_finite(f"networks_{atlas}.parquet", summaries, key_list, MAX_ABS_Z)
    for metric in bundle.map_names:
        _, values = bundle.maps(metric)
        _check_finite(f"maps/{metric}.npy", np.asarray(values), key_list, None)
    counts = subjects["dx"].astype(str).value_counts()
    return {str(labels[g]): int(counts.get(str(labels[g]), 0)) for g in ("case", "control")}


def group_flags(group_counts: dict[str, int], minimum: int) -> list[str]:
    return [
        f"small_group:{label}={n}<{minimum}" for label, n in group_counts.items() if n < minimum
    ]


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
        raise _rejected(
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
        manifest_bytes, manifest = _check_identity(bundle_dir, site)
        bundle_hash = hashlib.sha256(manifest_bytes).hexdigest()
        try:
            bundle = read_bundle(
                bundle_dir, verify=True, public_key_pem=site.public_key_pem.encode()
            )
        except BundleError as exc:
            raise _rejected("bad_bundle", f"{name}: {exc}") from exc
        with coord.db.session() as session:
            existing = _existing(session, bundle_hash, site.id)
            if existing is not None:  # the same files as stored: verified just above
                raise _Duplicate(existing.id)
        try:
            group_counts = check_values(bundle)
        except BundleError as exc:
            raise _rejected("bad_bundle", f"{name}: {exc}") from exc
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
