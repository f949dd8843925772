"""Receiving a bundle upload: streaming it into an unpacking thread, and tar extraction.

First step of ingest (:mod:`consortium.ingest`): an HTTP upload is unpacked
while it is received (:func:`receive_and_unpack`, through a :class:`ChunkPipe`
read by a thread of its own), and an archive on disk is unpacked by
:func:`safe_extract`; both refuse unsafe or oversized archives with an HTTP
status (:data:`ARCHIVE_STATUS`), and a full disk with 507.
"""

from __future__ import annotations

import asyncio
import errno
import io
import queue
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy.exc import OperationalError

from consortium.errors import ConfedError
from sites.archive import ArchiveError, read_archive_manifest, unpack_archive, unpack_stream
from sites.bundle import MANIFEST

#: Uploaded chunks are written to disk in a worker thread, this many bytes at a time.
WRITE_BATCH = 512 * 1024


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
        raise ConfedError(
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
                raise ConfedError("too_large", f"upload exceeds the limit of {limit} bytes", 413)
            batch.append(chunk)
            pending += len(chunk)
            if pending >= WRITE_BATCH:
                if reader.done():
                    break  # refused already: no need to receive the rest
                await _hand_over(pipe, b"".join(batch), reader)
                batch, pending = [], 0
        if size == 0:
            raise ConfedError("empty_upload", "the upload is empty", 400)
        if batch:
            await _hand_over(pipe, b"".join(batch), reader)
        await _hand_over(pipe, None, reader)
        return await reader, size
    except ArchiveError as exc:
        raise archive_refusal(exc) from exc
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(exc, "receiving and unpacking the upload") from exc
        raise
    finally:
        pipe.abort()
        await asyncio.wait([reader])
        if not reader.cancelled():
            reader.exception()  # retrieved; the error raised above is the one to report


#: The HTTP status of each archive refusal (:class:`sites.archive.ArchiveError` codes).
ARCHIVE_STATUS = {
    "bad_archive": 400,
    "unsafe_archive": 400,
    "compressed_archive": 415,
    "too_many_files": 413,
    "too_large": 413,
    "bad_bundle": 422,
}


def archive_refusal(exc: ArchiveError) -> ConfedError:
    """The refusal of an archive as a :class:`ConfedError` with its HTTP status."""
    return ConfedError(exc.code, exc.message, ARCHIVE_STATUS[exc.code])


def safe_extract(tar_path: Path, dest: Path, max_bytes: int, archive_name: str) -> Path:
    """Check and unpack a bundle archive into ``dest``; return ``dest`` (the bundle root).

    :func:`sites.archive.unpack_archive` checks every header and the manifest
    before anything is written, and writes at most the declared sizes.
    """
    try:
        unpack_archive(tar_path, dest, max_bytes, archive_name)
    except ArchiveError as exc:
        raise archive_refusal(exc) from exc
    except FileExistsError as exc:
        raise ConfedError(
            "bad_archive", f"{archive_name}: tar member listed twice ({exc.filename})", 400
        ) from exc
    return dest


def manifest_site_id(tar_path: Path) -> str:
    """The ``site_id`` a bundle archive's manifest claims (for offline imports)."""
    try:
        manifest = read_archive_manifest(tar_path)
    except ArchiveError as exc:
        raise archive_refusal(exc) from exc
    site_id = manifest.get("site_id")
    if not isinstance(site_id, str):
        raise ConfedError("bad_bundle", f"{tar_path}: {MANIFEST} has no site_id", 422)
    return site_id
