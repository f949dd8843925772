"""Consistency check of the data store against the database (``confed coord fsck``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select

from consortium.coordinator import Coordinator
from consortium.db.models import Release, StoredObject, Submission, SubmissionFile
from sites.bundle import sha256_file
from sites.contract import ContractError, check_manifest_files, parse_manifest


@dataclass
class FsckReport:
    checked: int = 0
    errors: list[str] = field(default_factory=list)
    unreferenced: list[str] = field(default_factory=list)
    temporaries: list[str] = field(default_factory=list)
    damaged: set[str] = field(default_factory=set)  # objects missing or not matching their hash

    @property
    def clean(self) -> bool:
        return not self.errors


def fsck(coord: Coordinator, repair: bool = False) -> FsckReport:
    """Re-hash every stored object against the database.

    Errors: an object in the database that is missing, has the wrong size or
    hash, or a submission file without its object. Not errors but listed: complete
    objects on disk that no database row references (left by an ingest killed
    between storing and committing; a retry reuses them) and leftover temporaries.
    ``repair`` removes those two kinds only.

    Every submission (releases first) is also checked: each object it references
    is re-hashed above; its manifest must obey the bundle contract; its view
    ``bundles/<bundle_hash>/`` must hold exactly its files, each the very object
    (a hard link) and inside the store. A problem of a released submission names
    the release.
    """
    report = FsckReport()
    with coord.db.session() as session:
        objects = {o.sha256: o.size for o in session.execute(select(StoredObject)).scalars()}
        file_objects = set(session.execute(select(SubmissionFile.sha256)).scalars())
    for sha in sorted(file_objects - set(objects)):
        report.errors.append(f"submission file refers to unknown object {sha}")
    for sha, size in sorted(objects.items()):
        path = coord.store.path(sha)
        report.checked += 1
        if not path.is_file():
            report.errors.append(f"object {sha}: missing from {path.parent}")
            report.damaged.add(sha)
            continue
        if path.stat().st_size != size:
            report.errors.append(f"object {sha}: size {path.stat().st_size}, database says {size}")
            report.damaged.add(sha)
        elif sha256_file(path) != sha:
            report.errors.append(f"object {sha}: content does not match its hash (corrupted)")
            report.damaged.add(sha)
    for path in coord.store.iter_objects():
        if path.name not in objects or path.parent.name != path.name[:2]:
            report.unreferenced.append(path.relative_to(coord.store.root).as_posix())
            if repair:
                path.unlink()
    _check_submissions(coord, report)
    report.temporaries = [p.name for p in coord.store.stale_temporaries()]
    if repair:
        coord.store.clean_tmp()
    return report


def _check_submissions(coord: Coordinator, report: FsckReport) -> None:
    """Manifests and views of every submission, with the releases that hold them."""
    with coord.db.session() as session:
        releases: dict[int, list[str]] = {}
        for release in session.execute(select(Release)).scalars():
            for member in release.members:
                releases.setdefault(member.submission_id, []).append(release.name)
        subs = [
            (s.id, s.bundle_hash, {f.path: f.sha256 for f in s.files})
            for s in session.execute(select(Submission)).scalars()
        ]
    for sub_id, bundle_hash, files in subs:
        where = f"submission {sub_id}"
        if sub_id in releases:
            where = f"release {', '.join(sorted(releases[sub_id]))}: {where}"
        problems = [
            f"{rel}: object {sha[:16]}... is missing or corrupted"
            for rel, sha in sorted(files.items())
            if sha in report.damaged
        ]
        problems += _manifest_problems(coord, bundle_hash, files)
        problems += coord.store.check_view(bundle_hash, files, rehash=False)
        report.errors += [f"{where}: {problem}" for problem in problems]


def _manifest_problems(coord: Coordinator, bundle_hash: str, files: dict[str, str]) -> list[str]:
    if files.get("manifest.json") != bundle_hash:
        return ["manifest.json is not the object of the bundle hash"]
    path = coord.store.path(bundle_hash)
    if not path.is_file():
        return []  # reported as a missing object
    try:
        check_manifest_files(parse_manifest(path.read_bytes()))
    except ContractError as exc:
        return [str(exc)]
    return []
