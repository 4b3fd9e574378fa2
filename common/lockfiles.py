"""Files a process appends to under an exclusive ``flock`` while it lives, for another process
to claim once it died: the crash journal and the job-state spill file.

The lock says the writer lives: the kernel drops it with the process, however it dies. A
claimer takes the lock without waiting, then checks that the path still names the file it
opened, because a writer compacts its file by writing a new one, locking it and renaming it
over the old (``replace``); a claimer that opened the old file in between must leave it.

A writer that appends on a hot path (the crash journal: two lines per job) uses a
``MappedFile`` instead of ``write``: an append is a memory copy into a shared map of the
file, with no system call (see its doc).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

__all__ = ["MappedFile", "claim", "create", "create_mapped", "replace", "replace_mapped", "write_all"]

T = TypeVar("T")


def create(path: Path) -> int:
    """A new file of this process, locked for as long as the returned descriptor is open."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def replace(path: Path, data: bytes, *, staging_suffix: str) -> int:
    """Put ``data`` at ``path`` in a new locked file and return its descriptor; the caller then
    closes the old one. The path names a whole, locked file at every instant; an ``OSError``
    leaves the old file in place."""

    def written(fd: int) -> int:
        write_all(fd, data)
        return fd

    return _replace_with(path, staging_suffix, os.O_WRONLY | os.O_APPEND, written, os.close)


def _replace_with(path: Path, staging_suffix: str, flags: int, fill: Callable[[int], T],
                  close: Callable[[T], None]) -> T:
    """A new file, locked before it is filled and renamed over ``path``: what ``fill`` made of
    its descriptor. On any failure nothing is left behind and the old file stays in place."""
    staging = path.with_suffix(staging_suffix)
    fd = os.open(staging, flags | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # before the rename: a claimer must never find it free
        made = fill(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            staging.unlink()
        raise
    try:
        os.rename(staging, path)
    except BaseException:
        close(made)
        with contextlib.suppress(OSError):
            staging.unlink()
        raise
    return made


class MappedFile:
    """A locked file appended to through a shared memory map (``MAP_SHARED``).

    A store into the map *is* a store into the kernel's page cache of the file: a reader (a
    claimer) sees it at once, and the kernel keeps it and writes it back when the process dies,
    however it dies, exactly as it would keep the bytes of a ``write`` (only a machine crash
    loses either, neither is fsynced). So an append made before a handler runs is on record
    before the handler's first instruction, without a system call per append.

    The file is ``used + room`` bytes long from the start, its blocks reserved by
    ``posix_fallocate``: a store into an unreserved page on a full disk would kill the process
    with SIGBUS, while a full disk here is an ``OSError`` when the file is made. Bytes past the
    appended ones are NULs, which readers take as the end of the file."""

    # Pages appended past are handed back this many bytes at a time (MADV_DONTNEED: for a shared
    # file mapping the bytes stay in the page cache and the file; only this process's page
    # table lets go), so the journal adds at most this much to the worker's resident memory.
    _RELEASE_EVERY = 64 * 1024

    def __init__(self, fd: int, data: bytes, room: int) -> None:
        size = len(data) + max(room, 1)
        os.posix_fallocate(fd, 0, size)
        self.fd = fd
        self._map = mmap.mmap(fd, size)  # shared, read and write: what the fd allows
        self._size = size
        self._map[: len(data)] = data
        self.used = len(data)
        self._released = 0  # bytes below this are no longer mapped in (page-aligned)

    def append(self, data: bytes) -> bool:
        """Append ``data`` whole, or nothing and False when it does not fit."""
        end = self.used + len(data)
        if end > self._size:
            return False
        self._map[self.used : end] = data
        self.used = end
        if end - self._released >= self._RELEASE_EVERY:
            self._release(end)
        return True

    def _release(self, end: int) -> None:
        upto = end - end % mmap.PAGESIZE  # whole pages only: the last one is still written to
        if upto > self._released:
            self._map.madvise(mmap.MADV_DONTNEED, self._released, upto - self._released)
            self._released = upto

    def close(self) -> None:
        """Unmap and close (which releases the lock); what was appended stays in the file."""
        self._map.close()
        os.close(self.fd)


def create_mapped(path: Path, room: int, data: bytes = b"") -> MappedFile:
    """``create``, as a ``MappedFile`` holding ``data`` with ``room`` bytes to append."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return MappedFile(fd, data, room)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise


def replace_mapped(path: Path, data: bytes, room: int, *, staging_suffix: str) -> MappedFile:
    """``replace``, as a ``MappedFile`` holding ``data`` with ``room`` bytes to append."""
    return _replace_with(path, staging_suffix, os.O_RDWR, lambda fd: MappedFile(fd, data, room), MappedFile.close)


@contextlib.contextmanager
def claim(path: Path, *, staging_suffix: str) -> Iterator[BinaryIO | None]:
    """The file of a dead writer, to read; ``None`` when its writer lives or another claimer
    took it first. A file read to the end of the block is removed, with any staging file its
    writer left when it died compacting (the file itself is whole then)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        try:
            current = os.fstat(fd).st_ino == path.stat().st_ino
        except FileNotFoundError:
            current = False
        if not current:
            yield None
            return
        with os.fdopen(os.dup(fd), "rb") as file:
            yield file
        path.unlink()
        with contextlib.suppress(FileNotFoundError):
            path.with_suffix(staging_suffix).unlink()
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
