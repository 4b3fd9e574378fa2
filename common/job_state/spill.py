"""A local copy of the transitions not yet written: what a ``kill -9`` must not take with it.

The batched writer keeps transitions in memory for up to its flush interval (longer while the
store is down). A worker killed then would leave jobs it had finished looking unfinished: their
messages are acked, so no redelivery ever corrects them. So each transition is also appended, as
one JSON line, to a file of this process in the state directory (a plain ``write``: the kernel
keeps it when the process dies, as for the crash journal), under an exclusive ``flock`` held
while the process lives. Whenever everything recorded has been written to the store, the file
is emptied; under steady load that moment may never come, so the writer also has the file
rewritten to just the transitions still unwritten once it holds twice as many lines as those
(``rewrite``, atomic by rename: ``conveyor.common.lockfiles``).

A new worker *claims* every spill file whose lock is free (its writer died) and writes its lines
to the store. Lines already written once are harmless: every write is forward-only. Scope: one
host's state directory (on Kubernetes an ``emptyDir``, which outlives container restarts).
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterable
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from conveyor.common import lockfiles
from conveyor.common.job_state.states import JobState, Transition

__all__ = ["SpillFile", "decode_transition", "encode_transition"]

log = logging.getLogger(__name__)

_SUFFIX = ".jobstate"
_STAGING = ".jobstate-new"  # a rewrite's new file before its rename; not a spill file to claim
_TIMES = frozenset({"at", "created_at", "scheduled_for"})
_NAMES = tuple(f.name for f in fields(Transition))


def encode_transition(t: Transition) -> bytes:
    return orjson.dumps({name: getattr(t, name) for name in _NAMES}) + b"\n"


def decode_transition(line: bytes) -> Transition:
    data: dict[str, Any] = orjson.loads(line)
    for name in _TIMES:
        if data.get(name) is not None:
            data[name] = datetime.fromisoformat(data[name])
    data["state"] = JobState(data["state"])
    return Transition(**{k: v for k, v in data.items() if k in _NAMES})


class SpillFile:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd: int | None = None
        self._path: Path | None = None
        self.lines = 0  # transitions in the file now

    def open(self) -> list[Transition]:
        """Start this process's file; return the transitions claimed from dead processes' files."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{os.getpid()}-{uuid.uuid4().hex[:8]}{_SUFFIX}"
        self._fd, self._path = lockfiles.create(path), path
        claimed: list[Transition] = []
        for other in sorted(self.directory.glob(f"*{_SUFFIX}")):
            if other != path:
                claimed.extend(self._claim(other))
        return claimed

    def append(self, transition: Transition) -> None:
        if self._fd is not None:
            lockfiles.write_all(self._fd, encode_transition(transition))
            self.lines += 1

    def written(self) -> None:
        """Everything appended is in the store: start the file over."""
        if self._fd is not None and self.lines:
            os.ftruncate(self._fd, 0)
            self.lines = 0

    def rewrite(self, unwritten: Iterable[Transition]) -> None:
        """Only ``unwritten`` (every transition not yet in the store) is still needed: replace
        the file by one holding just those. An ``OSError`` leaves the old file whole."""
        old, path = self._fd, self._path
        if old is None or path is None:
            return
        lines = [encode_transition(t) for t in unwritten]
        self._fd = lockfiles.replace(path, b"".join(lines), staging_suffix=_STAGING)
        self.lines = len(lines)
        os.close(old)

    def close(self, *, keep: bool) -> None:
        """``keep``: transitions are still unwritten; leave them for the next worker to claim."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if not keep and self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
        os.close(fd)  # releases the lock

    def _claim(self, path: Path) -> list[Transition]:
        claimed = []
        with lockfiles.claim(path, staging_suffix=_STAGING) as spill:
            if spill is None:
                return []
            for line in spill:  # streamed, not read whole
                try:
                    claimed.append(decode_transition(line))
                except (ValueError, TypeError, KeyError):
                    continue  # a line cut short by the death
        if claimed:
            log.info("claimed a dead worker's unwritten job states", extra={"count": len(claimed)})
        return claimed
