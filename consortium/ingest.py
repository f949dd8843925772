"""Ingest of site bundles: safe extraction, verification, value checks, storage.

The same path serves HTTP uploads and offline imports (``confed coord import``):

1. the upload is streamed to a temporary file with a size limit (413 beyond it);
2. the tar is extracted into a private temporary directory, refusing ``..``,
   absolute paths, links, device files and anything but regular files and folders;
3. the manifest's site id must be the uploading site's, and its Ed25519
   signature must verify with the key registered for that site (403 otherwise);
4. ``sites.bundle.read_bundle`` checks format version, file set, sizes and checksums;
5. value checks: finite connectivity and maps, plausible ranges, known codes,
   unique pseudonyms; groups smaller than ``min_per_group`` are flagged, not refused;
6. files are staged, fsynced, re-hashed and renamed into the object store, and the
   submission becomes visible in one database transaction (with its audit entry),
   superseding the site's previous submission.

An identical bundle (same bundle hash) returns the existing submission, so a
site may retry an upload safely.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from consortium import audit
from consortium.coordinator import Coordinator
from consortium.db.models import Site, StoredObject, Submission, SubmissionFile, Upload
from consortium.errors import ConfedError
from consortium.store import StagedObject
from sites.bundle import (
    MANIFEST,
    SIGNATURE,
    SUPPORTED_VERSIONS,
    BundleError,
    read_bundle,
    verify_manifest_signature,
)

#: Test hook: seconds to sleep after all objects are staged (crash tests kill it then).
PAUSE_ENV = "CONFED_TEST_INGEST_PAUSE"
PAUSE_MARKER = "ingest-paused"
#: Extracted content may be at most this many times the upload limit (tar bombs).
EXTRACT_RATIO = 8

RANGES = {
    "age": (0.0, 120.0),
    "mean_fd": (0.0, 10.0),
    "education_years": (0.0, 40.0),
    "hamd": (0.0, 60.0),
}
CODES = {"sex": {"M", "F"}, "episode": {"first", "recurrent"}, "medication": {"naive", "treated"}}
REQUIRED = ("subject_key", "dx", "age", "sex", "mean_fd")
MAX_ABS_Z = 20.0  # |atanh(r)| = 20 means |r| = 1 - 8e-18: a copy of a region, not a correlation


@dataclass
class IngestResult:
    submission: Submission
    created: bool


def _rejected(code: str, message: str, status: int = 422) -> ConfedError:
    return ConfedError(code, message, status)


# --------------------------------------------------------------------------- upload stream


async def receive_upload(
    chunks: AsyncIterator[bytes], dest: Path, limit: int, declared: int | None = None
) -> int:
    """Write an upload stream to ``dest``; refuse it (413) as soon as it exceeds ``limit``."""
    if declared is not None and declared > limit:
        raise _rejected(
            "too_large", f"upload of {declared} bytes exceeds the limit of {limit} bytes", 413
        )
    size = 0
    try:
        with open(dest, "wb") as fh:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise _rejected("too_large", f"upload exceeds the limit of {limit} bytes", 413)
                fh.write(chunk)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    if size == 0:
        dest.unlink(missing_ok=True)
        raise _rejected("empty_upload", "the upload is empty", 400)
    return size


# --------------------------------------------------------------------------- tar extraction


def _check_member(member: tarfile.TarInfo, archive_name: str) -> PurePosixPath:
    name = member.name
    pure = PurePosixPath(name)
    where = f"{archive_name}: tar member {name!r}"
    if name.startswith(("/", "\\")) or pure.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise _rejected("unsafe_archive", f"{where} has an absolute path", 400)
    if ".." in pure.parts or "\\" in name:
        raise _rejected("unsafe_archive", f"{where} escapes the bundle with '..'", 400)
    if member.issym() or member.islnk():
        raise _rejected("unsafe_archive", f"{where} is a link", 400)
    if member.isdev() or member.isfifo():
        raise _rejected("unsafe_archive", f"{where} is a device or FIFO", 400)
    if not (member.isfile() or member.isdir()):
        raise _rejected("unsafe_archive", f"{where} is not a regular file or folder", 400)
    return pure


def safe_extract(tar_path: Path, dest: Path, max_bytes: int, archive_name: str) -> Path:
    """Extract ``tar_path`` into ``dest``; return the folder holding ``manifest.json``.

    Every member is checked before anything is written.
    """
    try:
        with tarfile.open(tar_path, "r:*") as archive:
            members = archive.getmembers()
            paths = [_check_member(m, archive_name) for m in members]
            total = sum(m.size for m in members if m.isfile())
            if total > max_bytes:
                raise _rejected(
                    "too_large",
                    f"{archive_name}: unpacks to {total} bytes (limit {max_bytes})",
                    413,
                )
            for member, pure in zip(members, paths, strict=True):
                target = dest.joinpath(*pure.parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = archive.extractfile(member)
                with open(target, "xb") as fh:
                    shutil.copyfileobj(src, fh, 1 << 20)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, FileExistsError):
            msg = f"{archive_name}: tar member listed twice ({exc.filename})"
        else:
            msg = f"{archive_name}: corrupted or truncated tar archive ({exc})"
        raise _rejected("bad_archive", msg, 400) from exc
    if (dest / MANIFEST).is_file():
        return dest
    tops = list(dest.iterdir())
    if len(tops) == 1 and (tops[0] / MANIFEST).is_file():
        return tops[0]
    raise _rejected("bad_bundle", f"{archive_name}: no {MANIFEST} at the top of the archive")


def manifest_site_id(tar_path: Path) -> str:
    """The ``site_id`` a bundle archive's manifest claims (for offline imports)."""
    try:
        with tarfile.open(tar_path, "r:*") as archive:
            for member in archive:
                if member.isfile() and PurePosixPath(member.name).name == MANIFEST:
                    if len(PurePosixPath(member.name).parts) <= 2:
                        manifest = json.loads(archive.extractfile(member).read())
                        return str(manifest["site_id"])
    except (tarfile.TarError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise _rejected(
            "bad_archive", f"{tar_path}: cannot read the site id from {MANIFEST} ({exc})", 400
        ) from exc
    raise _rejected("bad_bundle", f"{tar_path}: no {MANIFEST} at the top of the archive")


# --------------------------------------------------------------------------- checks


def _check_identity(bundle_dir: Path, site: Site) -> tuple[bytes, dict]:
    manifest_bytes = (bundle_dir / MANIFEST).read_bytes()
    try:
        manifest = json.loads(manifest_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _rejected("bad_bundle", f"{MANIFEST}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise _rejected("bad_bundle", f"{MANIFEST}: not a JSON object")
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
    """Value checks beyond the bundle format; returns group counts by diagnosis label."""
    subjects: pd.DataFrame = bundle.subjects
    missing = [c for c in REQUIRED if c not in subjects.columns]
    if missing:
        raise _rejected("bad_values", f"subjects.parquet: missing columns {missing}")
    keys = subjects["subject_key"].astype(str)
    malformed = keys[~keys.str.fullmatch(r"[0-9a-f]{64}")]
    if len(malformed):
        raise _rejected(
            "bad_values", f"subjects.parquet: subject_key {malformed.iloc[0]!r} is not a pseudonym"
        )
    dup = keys[keys.duplicated()]
    if len(dup):
        raise _rejected(
            "bad_values", f"subjects.parquet: duplicate subject_key {dup.iloc[0][:16]}..."
        )
    labels = bundle.manifest.get("dx_labels")
    if not isinstance(labels, dict) or not {"case", "control"} <= set(labels):
        raise _rejected("bad_values", f"{MANIFEST}: dx_labels must name 'case' and 'control'")
    known = {str(labels["case"]), str(labels["control"])}
    for column, allowed in {"dx": known, **CODES}.items():
        if column not in subjects.columns:
            continue
        values = subjects[column]
        present = values.notna() if column not in ("dx", "sex") else pd.Series(True, values.index)
        bad = present & ~values.astype(str).isin(allowed)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise _rejected(
                "bad_values",
                f"subjects.parquet: {column} {values.iloc[i]!r} of subject {keys.iloc[i][:16]}... "
                f"is not one of {sorted(allowed)}",
            )
    for column, (low, high) in RANGES.items():
        if column not in subjects.columns:
            continue
        values = pd.to_numeric(subjects[column], errors="coerce").to_numpy(dtype=float)
        required = column in REQUIRED
        bad = ~np.isfinite(values) if required else np.isinf(values)
        with np.errstate(invalid="ignore"):
            bad |= (values < low) | (values > high)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise _rejected(
                "bad_values",
                f"subjects.parquet: {column} = {values[i]!r} of subject {keys.iloc[i][:16]}... "
                f"is outside the plausible range [{low}, {high}]",
            )
    key_list = keys.tolist()
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

    Raises
    ------
    ConfedError
        With code and HTTP status; every refusal is also recorded as an upload of
        the site with its reason, and audited.
    """
    name = name or tar_path.name
    size = tar_path.stat().st_size
    with coord.db.session() as session:
        site = session.get(Site, site_id)
        if site is None:
            raise ConfedError("not_found", f"site {site_id} not found", 404)
        session.expunge(site)
    workdir = coord.store.temp_path("ingest")
    workdir.mkdir()
    staged: list[StagedObject] = []
    try:
        bundle_dir = safe_extract(
            tar_path, workdir, coord.settings.max_upload_bytes * EXTRACT_RATIO, name
        )
        manifest_bytes, manifest = _check_identity(bundle_dir, site)
        bundle_hash = hashlib.sha256(manifest_bytes).hexdigest()
        with coord.db.session() as session:
            existing = _existing(session, bundle_hash, site_id)
            if existing is not None:
                raise _Duplicate(existing.id)
        try:
            bundle = read_bundle(
                bundle_dir, verify=True, public_key_pem=site.public_key_pem.encode()
            )
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
        result = _commit(coord, site_id, actor, bundle, manifest, rel, group_counts, size)
        coord.store.view(
            bundle_hash, {f.path: f.sha256 for f in _files(coord, result.submission.id)}
        )
        return result
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
        record_upload(coord, site_id, actor, size, "rejected", err)
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
