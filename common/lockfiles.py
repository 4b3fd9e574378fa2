"""Files a process appends to under an exclusive ``flock`` while it lives, for another process
to claim once it died: the crash journal and the job-state spill file.

The lock says the writer lives: the kernel drops it with the process, however it dies. A
claimer takes the lock without waiting, then checks that the path still names the file it
opened, because a writer compacts its file by writing a new one, locking it and renaming it
over the old (``replace``); a claimer that opened the old file in between must leave it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["claim", "create", "replace", "write_all"]


def create(path: Path) -> int:
    """A new file of this process, locked for as long as the returned descriptor is open."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def replace(path: Path, data: bytes, *, staging_suffix: str) -> int:
    """Put ``data`` at ``path`` in a new locked file and return its descriptor; the caller then
    closes the old one. The path names a whole, locked file at every instant; an ``OSError``
    leaves the old file in place."""
    staging = path.with_suffix(staging_suffix)
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # before the rename: a claimer must never find it free
        write_all(fd, data)
        os.rename(staging, path)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            staging.unlink()
        raise
    return fd


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
