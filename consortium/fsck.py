"""Consistency check of the data store against the database (``confed coord fsck``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select

from consortium.coordinator import Coordinator
from consortium.db.models import StoredObject, SubmissionFile
from sites.bundle import sha256_file


@dataclass
class FsckReport:
    checked: int = 0
    errors: list[str] = field(default_factory=list)
    unreferenced: list[str] = field(default_factory=list)
    temporaries: list[str] = field(default_factory=list)

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
            continue
        if path.stat().st_size != size:
            report.errors.append(f"object {sha}: size {path.stat().st_size}, database says {size}")
        elif sha256_file(path) != sha:
            report.errors.append(f"object {sha}: content does not match its hash (corrupted)")
    for path in coord.store.iter_objects():
        if path.name not in objects or path.parent.name != path.name[:2]:
            report.unreferenced.append(path.relative_to(coord.store.root).as_posix())
            if repair:
                path.unlink()
    report.temporaries = [p.name for p in coord.store.stale_temporaries()]
    if repair:
        coord.store.clean_tmp()
    return report
