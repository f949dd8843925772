"""Content-addressed, write-once object store.

Objects live at ``objects/<sha[:2]>/<sha256>``. A file is first written under
``tmp/``, fsynced and re-hashed; only when the checksum matches is it renamed into
place (an atomic step on POSIX), so a crash never leaves a half-written object
visible. Objects are made read-only.

Bundle views (``bundles/<bundle_hash>/``) are directories of hard links to the
objects, laid out as the original bundle so ``sites.bundle.read_bundle`` can open
them without copying data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from consortium.errors import ConfedError
from sites.bundle import sha256_file
from sites.contract import ContractError, check_bundle_path

CHUNK = 1 << 20
#: (device, inode, size, mtime, ctime) of a file -> its SHA-256, for this process.
_HASHES: dict[tuple[int, int, int, int, int], str] = {}


def cached_sha256(path: Path) -> str:
    """SHA-256 of ``path``, hashed once per process while the file is unchanged.

    The cache key includes the inode's change time (``ctime``), which every
    write, truncation, ``chmod`` or ``touch`` moves, so a modified file is
    always re-hashed.
    """
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    digest = _HASHES.get(key)
    if digest is None:
        digest = _HASHES[key] = sha256_file(path)
    return digest


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class StagedObject:
    """A verified temporary copy waiting to be renamed into the store."""

    sha256: str
    size: int
    temp_path: Path


class ObjectStore:
    """Write-once objects under ``root``.

    Parameters
    ----------
    root : Path
        Coordinator data root; ``objects/``, ``bundles/`` and ``tmp/`` are created in it.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.objects_dir = self.root / "objects"
        self.bundles_dir = self.root / "bundles"
        self.tmp_dir = self.root / "tmp"
        for d in (self.objects_dir, self.bundles_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)  # owner only, whatever the umask

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ConfedError("bad_hash", f"not a SHA-256 hex digest: {sha256!r}")
        return self.objects_dir / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def temp_path(self, prefix: str = "obj") -> Path:
        return self.tmp_dir / f"{prefix}-{uuid.uuid4().hex}"

    def stage(self, src: Path, expected_sha256: str | None = None) -> StagedObject:
        """Copy ``src`` to a temporary file, fsync it, and check its checksum."""
        tmp = self.temp_path()
        h = hashlib.sha256()
        size = 0
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(CHUNK):
                h.update(chunk)
                size += len(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        # Re-read what reached the disk, not what we meant to write.
        digest = sha256_file(tmp)
        if digest != h.hexdigest() or (expected_sha256 and digest != expected_sha256):
            tmp.unlink(missing_ok=True)
            raise ConfedError(
                "checksum_mismatch",
                f"{src.name}: checksum {digest} does not match expected "
                f"{expected_sha256 or h.hexdigest()}",
                422,
            )
        return StagedObject(digest, size, tmp)

    def adopt(self, path: Path, expected_sha256: str | None = None) -> StagedObject:
        """Stage a file already written under ``tmp/`` without copying it.

        The file is fsynced and re-hashed from disk; it is renamed into the store
        by :meth:`commit` (same file system, so the rename is atomic).
        """
        path = Path(path)
        if self.tmp_dir.resolve() not in path.resolve().parents:
            raise ValueError(f"{path}: only files under {self.tmp_dir} can be adopted")
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())
        digest = sha256_file(path)
        if expected_sha256 and digest != expected_sha256:
            raise ConfedError(
                "checksum_mismatch",
                f"{path.name}: checksum {digest} does not match expected {expected_sha256}",
                422,
            )
        return StagedObject(digest, path.stat().st_size, path)

    def commit(self, staged: StagedObject) -> Path:
        """Rename a staged object into place (a no-op if an identical one exists)."""
        dest = self.path(staged.sha256)
        if dest.exists():
            staged.temp_path.unlink(missing_ok=True)
            return dest
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(staged.temp_path, 0o400)  # read-only, owner only
        os.replace(staged.temp_path, dest)
        _fsync_dir(dest.parent)
        return dest

    def discard(self, staged: Iterable[StagedObject]) -> None:
        for s in staged:
            s.temp_path.unlink(missing_ok=True)

    def iter_objects(self) -> Iterator[Path]:
        """Every file under ``objects/`` (names are not trusted to be hashes)."""
        for sub in sorted(self.objects_dir.iterdir()):
            if sub.is_dir():
                yield from sorted(sub.iterdir())

    def stale_temporaries(self) -> list[Path]:
        return sorted(self.tmp_dir.iterdir())

    def clean_tmp(self) -> int:
        """Remove leftovers of interrupted writes; call only when no ingest is running."""
        n = 0
        for p in self.stale_temporaries():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
            n += 1
        return n

    def view(self, bundle_hash: str, files: dict[str, str]) -> Path:
        """The bundle laid out as a directory of hard links to its objects.

        Built under ``tmp/`` and renamed into ``bundles/<bundle_hash>`` so a reader
        never sees a partial view.
        """
        dest = self.bundles_dir / bundle_hash
        if dest.is_dir():
            return dest
        tmp = self.temp_path("view")
        tmp.mkdir(mode=0o700)
        for rel, sha in files.items():
            try:
                check_bundle_path(rel, "file")
            except ContractError as exc:
                shutil.rmtree(tmp)
                message = f"bundle {bundle_hash[:16]}...: {exc}"
                raise ConfedError("store_corrupted", message, 500) from exc
            target = tmp / rel
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            obj = self.path(sha)
            if not obj.is_file():
                shutil.rmtree(tmp)
                raise ConfedError("object_missing", f"object {sha} of {rel} is missing", 500)
            os.link(obj, target)
        try:
            os.rename(tmp, dest)
        except OSError:
            shutil.rmtree(tmp)  # another request built it first
            if not dest.is_dir():
                raise
        return dest

    def check_view(self, bundle_hash: str, files: dict[str, str], rehash: bool = True) -> list[str]:
        """Problems of the view ``bundles/<bundle_hash>/`` against ``files`` (path -> sha256).

        Every path must be a valid bundle path, resolve inside the view (so inside
        the store), be the very object file (a hard link: same inode) and, with
        ``rehash``, the object's content must match its hash. Files in the view
        that ``files`` does not list are problems too. A missing view is none.
        """
        view = self.bundles_dir / bundle_hash
        if not view.is_dir():
            return []
        problems = [self._check_view_file(view, rel, sha, rehash) for rel, sha in files.items()]
        present = {p.relative_to(view).as_posix() for p in view.rglob("*") if not p.is_dir()}
        problems += [f"{view.name}/{rel}: extra file in the view" for rel in present - set(files)]
        return [p for p in problems if p]

    def _check_view_file(self, view: Path, rel: str, sha: str, rehash: bool) -> str | None:
        where = f"{view.name}/{rel}"
        try:
            check_bundle_path(rel, "file")
        except ContractError as exc:
            return f"{where}: {exc}"
        path, obj = view / rel, self.path(sha)
        if path.is_symlink() or view.resolve() not in path.resolve().parents:
            return f"{where}: resolves outside the view (a link)"
        if not path.is_file() or not obj.is_file():
            return f"{where}: missing (object {sha[:16]}...)"
        a, b = os.stat(path), os.stat(obj)
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
            return f"{where}: the view file differs from its object {sha[:16]}..."
        if rehash and cached_sha256(obj) != sha:
            return f"{where}: content does not match its hash {sha[:16]}... (modified)"
        return None

    def verified_view(self, bundle_hash: str, files: dict[str, str]) -> Path:
        """The view of a bundle whose every file was checked against its hash.

        Raises
        ------
        ConfedError
            ``store_corrupted`` (500) naming the first file that is not its object.
        """
        view = self.view(bundle_hash, files)
        problems = self.check_view(bundle_hash, files)
        if problems:
            raise ConfedError(
                "store_corrupted",
                f"bundle {bundle_hash[:16]}... in the object store is corrupted: {problems[0]} "
                f"({len(problems)} problem(s)); run `confed coord fsck`",
                500,
            )
        return view
