"""Bundle archives: a bounded scan and a safe unpack of an uncompressed bundle tar.

A bundle archive holds exactly the bundle's layout (``docs/site-data-manager/
bundle-format.md``), optionally under one top folder, as an uncompressed tar
(what :func:`sites.bundle.export_bundle` writes). The site agent (``confed site
validate``) and the coordinator (ingest, ``confed coord import``) both open
archives here, so both refuse the same things:

- a compressed archive (gzip, bzip2, xz, zstd, zip): nothing to inflate, no bombs;
- more than :data:`sites.contract.MAX_BUNDLE_FILES` members, read one header at a
  time (never the whole member list of an unbounded archive);
- links, devices, FIFOs, sparse files, absolute paths, ``..``, and any path that is
  not a valid bundle path (:func:`sites.contract.check_bundle_path`);
- a manifest that is too large, too deeply nested or whose names break the
  contract (:func:`sites.contract.check_manifest_files`);
- a member that is not listed in the manifest or whose size differs from the
  declared one, so the unpacked total can never exceed what the manifest declares;
- a truncated or corrupted archive.

Every check runs on the headers before a byte is unpacked.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from sites import contract
from sites.bundle import MANIFEST, SIGNATURE, SIGNER, BundleError

#: Magic bytes of compressed formats a bundle archive must not use.
COMPRESSED_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"PK\x03\x04", "zip"),
)
CHUNK = 1 << 20


class ArchiveError(BundleError):
    """A refused bundle archive.

    Attributes
    ----------
    code : str
        Machine-readable reason (``bad_archive``, ``unsafe_archive``,
        ``compressed_archive``, ``too_many_files``, ``too_large``, ``bad_bundle``).
    """

    def __init__(self, message: str, code: str = "bad_archive") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass
class ArchivePlan:
    """What a scanned archive holds: its file members and the parsed manifest."""

    files: list[tuple[tarfile.TarInfo, str]] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)
    manifest_bytes: bytes = b""
    total: int = 0


def _check_compression(path: Path, name: str) -> None:
    with open(path, "rb") as fh:
        _refuse_compressed(fh.read(8), name)


def _refuse_compressed(head: bytes, name: str) -> None:
    for magic, kind in COMPRESSED_MAGIC:
        if head.startswith(magic):
            raise ArchiveError(
                f"{name}: the archive is {kind}-compressed; a bundle is sent as an "
                "uncompressed tar (as `confed site export` and `confed site submit` write it)",
                "compressed_archive",
            )


def _check_member(info: tarfile.TarInfo, name: str, end: int) -> PurePosixPath:
    """Refuse unsafe member types and paths; the data must lie inside the file."""
    where = f"{name}: tar member {info.name[:120]!r}"
    pure = PurePosixPath(info.name)
    if info.name.startswith(("/", "\\")) or pure.is_absolute() or info.name[1:2] == ":":
        raise ArchiveError(f"{where} has an absolute path", "unsafe_archive")
    if ".." in pure.parts or "\\" in info.name:
        raise ArchiveError(f"{where} escapes the bundle with '..'", "unsafe_archive")
    if info.issym() or info.islnk():
        raise ArchiveError(f"{where} is a link", "unsafe_archive")
    if info.isdev() or info.isfifo():
        raise ArchiveError(f"{where} is a device or FIFO", "unsafe_archive")
    if info.issparse() or not (info.isfile() or info.isdir()):
        raise ArchiveError(f"{where} is not a regular file or folder", "unsafe_archive")
    if info.isfile() and info.offset_data + info.size > end:
        raise ArchiveError(f"{where}: corrupted or truncated tar archive (data past the end)")
    return pure


def _check_count(n_before: int, name: str) -> None:
    """Refuse the archive at its member number ``MAX_BUNDLE_FILES + 1``."""
    if n_before >= contract.MAX_BUNDLE_FILES:
        raise ArchiveError(
            f"{name}: more than {contract.MAX_BUNDLE_FILES} members; a bundle holds a "
            "few dozen files",
            "too_many_files",
        )


def _read_headers(archive: tarfile.TarFile, name: str, end: int) -> list[tarfile.TarInfo]:
    """Member headers one at a time, refusing the archive at the first bad one."""
    members: list[tarfile.TarInfo] = []
    while True:
        try:
            info = archive.next()
        except (tarfile.TarError, EOFError, ValueError) as exc:
            raise ArchiveError(f"{name}: corrupted or truncated tar archive ({exc})") from exc
        if info is None:
            break
        _check_count(len(members), name)
        _check_member(info, name, end)
        members.append(info)
    _check_end(archive, name, end)
    return members


def _check_end(archive: tarfile.TarFile, name: str, end: int) -> None:
    """A tar ends with two zero blocks; anything else there is truncation or corruption."""
    offset = archive.offset
    archive.fileobj.seek(offset)
    tail = archive.fileobj.read(2 * tarfile.BLOCKSIZE)
    if len(tail) < 2 * tarfile.BLOCKSIZE or tail.strip(b"\0"):
        raise ArchiveError(
            f"{name}: corrupted or truncated tar archive (no end-of-archive marker "
            f"at byte {offset})"
        )


def _layout(members: list[tarfile.TarInfo], name: str) -> tuple[tarfile.TarInfo, tuple]:
    """The manifest member and the top folder (``()`` or ``(top,)``) all members share."""
    manifests = [
        m for m in members if m.isfile() and PurePosixPath(m.name).parts[-1:] == (MANIFEST,)
    ]
    manifests = [m for m in manifests if len(PurePosixPath(m.name).parts) <= 2]
    if not manifests:
        raise ArchiveError(f"{name}: no {MANIFEST} at the top of the archive", "bad_bundle")
    if len(manifests) > 1:
        raise ArchiveError(f"{name}: more than one {MANIFEST}", "bad_bundle")
    prefix = PurePosixPath(manifests[0].name).parts[:-1]
    if prefix:
        _contract_name(prefix[0], f"{name}: top folder")
    return manifests[0], prefix


def _contract_name(value: str, what: str) -> None:
    """:func:`sites.contract.check_name` as an ``unsafe_archive`` refusal."""
    try:
        contract.check_name(value, what)
    except contract.ContractError as exc:
        raise ArchiveError(str(exc), "unsafe_archive") from exc


def _relative(info: tarfile.TarInfo, prefix: tuple, name: str) -> str | None:
    """The member's bundle path; ``None`` for a folder; refuse anything else."""
    parts = PurePosixPath(info.name).parts
    if info.isdir() and not parts:
        return None  # "." or "./"
    rel = parts[len(prefix) :] if parts[: len(prefix)] == prefix else None
    where = f"{name}: tar member {info.name[:120]!r}"
    if rel is None:
        raise ArchiveError(f"{where} is outside the bundle folder {prefix[0]!r}", "unsafe_archive")
    if info.isdir():
        if rel and rel not in ((f,) for f in contract.BUNDLE_FOLDERS):
            raise ArchiveError(f"{where} is not a bundle folder", "unsafe_archive")
        return None
    try:
        return contract.check_bundle_path("/".join(rel), f"{where}:")
    except contract.ContractError as exc:
        raise ArchiveError(str(exc), "unsafe_archive") from exc


def _check_manifest_size(info: tarfile.TarInfo, name: str) -> None:
    if info.size > contract.MAX_MANIFEST_BYTES:
        raise ArchiveError(
            f"{name}: {MANIFEST} has {info.size} bytes, more than the limit of "
            f"{contract.MAX_MANIFEST_BYTES}",
            "bad_bundle",
        )


def _read_manifest(archive: tarfile.TarFile, info: tarfile.TarInfo, name: str) -> bytes:
    _check_manifest_size(info, name)
    try:
        return archive.extractfile(info).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveError(f"{name}: corrupted or truncated tar archive ({exc})") from exc


def _check_sizes(plan: ArchivePlan, declared: dict[str, int], name: str) -> None:
    """Every member listed with its declared size (signature files: bounded)."""
    seen: set[str] = set()
    for info, rel in plan.files:
        if rel in seen:
            raise ArchiveError(f"{name}: tar member {rel!r} listed twice")
        seen.add(rel)
        plan.total += info.size
        if rel == MANIFEST:
            continue
        if rel in (SIGNATURE, SIGNER):
            limit = contract.MAX_SIGNER_BYTES
            if info.size > limit:
                raise ArchiveError(
                    f"{name}: {rel} has {info.size} bytes (at most {limit})",
                    "bad_bundle",
                )
        elif rel not in declared:
            raise ArchiveError(f"{rel}: extra file not in manifest", "bad_bundle")
        elif info.size != declared[rel]:
            raise ArchiveError(
                f"{rel}: size check failed ({info.size} bytes in the archive, manifest says "
                f"{declared[rel]})",
                "bad_bundle",
            )


def _plan(
    members: list[tarfile.TarInfo],
    name: str,
    read_manifest: Callable[[tarfile.TarInfo, tuple], bytes],
) -> tuple[ArchivePlan, tuple]:
    """Layout, manifest and declared sizes of an archive's members; and its top folder."""
    manifest_info, prefix = _layout(members, name)
    plan = ArchivePlan()
    plan.files = [(m, rel) for m in members if (rel := _relative(m, prefix, name)) is not None]
    plan.manifest_bytes = read_manifest(manifest_info, prefix)
    try:
        plan.manifest = contract.parse_manifest(plan.manifest_bytes)
        declared = contract.check_manifest_files(plan.manifest)
    except contract.ContractError as exc:
        raise ArchiveError(str(exc), "bad_bundle") from exc
    _check_sizes(plan, declared, name)
    return plan, prefix


def scan_archive(
    archive: tarfile.TarFile, name: str, end: int, max_bytes: int | None = None
) -> ArchivePlan:
    """Check every header and the manifest of an open archive; nothing is unpacked.

    Parameters
    ----------
    archive : tarfile.TarFile
        Opened for reading without compression (``"r:"``) on a seekable file.
    name : str
        The archive's name for messages.
    end : int
        The archive file's size in bytes.
    max_bytes : int, optional
        Refuse (``too_large``) if the files would unpack to more.

    Returns
    -------
    ArchivePlan
        File members with their bundle paths, the manifest and the unpacked total.
    """
    members = _read_headers(archive, name, end)
    plan, _ = _plan(members, name, lambda info, _prefix: _read_manifest(archive, info, name))
    if max_bytes is not None and plan.total > max_bytes:
        raise ArchiveError(
            f"{name}: unpacks to {plan.total} bytes (limit {max_bytes})",
            "too_large",
        )
    return plan


def open_archive(path: Path, name: str | None = None) -> tarfile.TarFile:
    """Open an uncompressed bundle tar; refuse compressed or unreadable files."""
    name = name or str(path)
    _check_compression(path, name)
    try:
        return tarfile.open(path, "r:")
    except (tarfile.TarError, EOFError, ValueError) as exc:
        raise ArchiveError(f"{name}: not a readable tar archive ({exc})") from exc


def read_archive_manifest(path: Path, name: str | None = None) -> dict:
    """The checked manifest of a bundle archive, without unpacking anything."""
    path = Path(path)
    with open_archive(path, name) as archive:
        return scan_archive(archive, name or str(path), path.stat().st_size).manifest


def _copy_member(archive: tarfile.TarFile, info: tarfile.TarInfo, target: Path, name: str) -> int:
    """Write one member's ``info.size`` bytes to ``target`` (never more)."""
    source = archive.extractfile(info)
    left = info.size
    with open(target, "xb") as fh:
        while left > 0:
            try:
                block = source.read(min(CHUNK, left))
            except (tarfile.TarError, EOFError) as exc:
                raise ArchiveError(f"{name}: corrupted or truncated tar archive ({exc})") from exc
            if not block:
                raise ArchiveError(f"{name}: corrupted or truncated tar archive ({info.name})")
            fh.write(block)
            left -= len(block)
    return info.size


def unpack_archive(
    path: Path, dest: Path, max_bytes: int | None = None, name: str | None = None
) -> ArchivePlan:
    """Check a bundle archive (:func:`scan_archive`), then unpack it into ``dest``.

    ``dest`` (an empty folder) becomes the bundle root: the manifest is at
    ``dest/manifest.json`` whatever the archive's top folder. Unpacking writes at
    most the manifest's declared sizes plus the manifest and signature files.

    Raises
    ------
    ArchiveError
        Any refusal, with ``code`` and ``status``.
    OSError
        The file system failed while writing (for example, no space left).
    """
    path, name = Path(path), name or str(path)
    with open_archive(path, name) as archive:
        plan = scan_archive(archive, name, path.stat().st_size, max_bytes)
        written = 0
        for info, rel in plan.files:
            target = dest.joinpath(*PurePosixPath(rel).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            written += _copy_member(archive, info, target, name)
            if written > plan.total:  # cannot happen: each copy is bounded by its header
                raise ArchiveError(f"{name}: unpacked more than declared", "too_large")
    return plan


# --------------------------------------------------------------------------- streaming


def _stream_target(info: tarfile.TarInfo, dest: Path, name: str) -> Path:
    """Where a streamed member goes: every path part a contract name, at most 3 deep.

    Its place in the bundle layout is checked once all headers are known
    (:func:`_finish_stream`); until then only names that are safe to create are
    written.
    """
    parts = PurePosixPath(info.name).parts
    if len(parts) > 3:
        raise ArchiveError(
            f"{name}: tar member {info.name[:120]!r} is not a valid bundle path", "unsafe_archive"
        )
    for part in parts:
        _contract_name(part, f"{name}: tar member {info.name[:120]!r}:")
    return dest.joinpath(*parts)


def _unpack_members(archive: tarfile.TarFile, dest: Path, name: str) -> list[tarfile.TarInfo]:
    members: list[tarfile.TarInfo] = []
    while True:
        info = archive.next()
        if info is None:
            return members
        _check_count(len(members), name)
        _check_member(info, name, info.offset_data + info.size)
        members.append(info)
        if not PurePosixPath(info.name).parts:
            continue  # "." or "./"
        target = _stream_target(info, dest, name)
        if info.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            _copy_member(archive, info, target, name)
        except FileExistsError as exc:
            raise ArchiveError(f"{name}: tar member {info.name[:120]!r} listed twice") from exc


def _finish_stream(members: list[tarfile.TarInfo], dest: Path, name: str) -> Path:
    """The same layout, manifest and size checks as :func:`scan_archive`, after the fact."""

    def read_unpacked(info: tarfile.TarInfo, prefix: tuple) -> bytes:
        _check_manifest_size(info, name)
        return dest.joinpath(*prefix, MANIFEST).read_bytes()

    _, prefix = _plan(members, name, read_unpacked)
    return dest.joinpath(*prefix)


def unpack_stream(stream: BinaryIO, dest: Path, name: str) -> Path:
    """Unpack a bundle archive from a non-seekable stream into ``dest`` as it arrives.

    The coordinator unpacks an upload while it is received, so the archive is
    never written to disk as a whole. Each member is checked as its header
    arrives (type, path made of contract names, member count) and written with
    exactly its header's size, so the unpacked total never exceeds the bytes
    received (an uncompressed tar holds its members verbatim); the caller bounds
    those. Once the stream ends, the layout, the manifest and every member's
    declared size are checked exactly as for a file (:func:`scan_archive`).

    Parameters
    ----------
    stream : binary file object
        Read sequentially, never seeked.
    dest : Path
        An empty folder.
    name : str
        The archive's name for messages.

    Returns
    -------
    Path
        The bundle root (``dest`` or its one top folder).

    Raises
    ------
    ArchiveError
        Any refusal, with ``code`` and ``status``.
    OSError
        The file system failed while writing (for example, no space left).
    """
    buffered = stream if isinstance(stream, io.BufferedReader) else io.BufferedReader(stream)
    _refuse_compressed(buffered.peek(8)[:8], name)
    try:
        with tarfile.open(fileobj=buffered, mode="r|") as archive:
            members = _unpack_members(archive, dest, name)
    except (tarfile.TarError, EOFError, ValueError) as exc:
        raise ArchiveError(f"{name}: corrupted or truncated tar archive ({exc})") from exc
    return _finish_stream(members, dest, name)
