"""Which jobs were running when a worker process died: a journal that outlives the process.

A job that kills its worker (a segfault in a C extension, the OOM killer, ``os._exit``, a loop
blocked until the watchdog ends the process) is redelivered by the broker, and kills the next
worker too. The broker cannot stop that loop: RabbitMQ's delivery count also grows for the
innocent jobs prefetched beside it, and Pulsar counts neither crashes nor disconnects and
forgets its redelivery count when the subscription's last consumer leaves. So the count comes
from a record of our own.

Each worker process appends ``S <job id> <time>`` when a job starts and ``F <job id>`` when it
ends (however it ends) to a file of its own in the state directory, holding an exclusive
``flock`` on it while it lives. The lines are stored into a shared memory map of the file
(``lockfiles.MappedFile``): a store into the map is a store into the kernel's page cache, kept
when the process dies exactly as the bytes of a ``write`` would be (only a machine crash loses
them, and then every process is gone anyway), and the ``S`` line is there before the handler's
first instruction, without two system calls per job. Past the lines the file holds NULs.
A new process *claims* every journal whose lock is free (its writer is dead): each job started
there and never finished was running at the death, and its crash count goes up by one. The
counts are carried forward as ``C <job id> <count> <first death>`` lines in the claimer's own
journal, so they survive the claimer's death too, and expire after ``retention`` seconds.

Two lines per job would fill the disk of a long-lived worker (an ``emptyDir`` has a size limit,
and a pod past it is evicted), so once ``compact_after`` bytes were appended the journal is
rewritten to what it still means (the runs in progress and the suspects) in a new file, locked
before it replaces the old one by ``rename``: at every instant the path names a complete,
locked journal, and a claimer that opened the old file sees its inode replaced and leaves it.

Scope: one host's state directory. On Kubernetes, mount an ``emptyDir`` (it survives container
restarts, which is what a crash loop is); a crashing job that wanders across hosts is stopped
after at most ``limit`` crashes per host it visits.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from conveyor.common import lockfiles
from conveyor.common.errors import ConfigurationError

__all__ = ["CrashJournal", "CrashRecord"]

_SUFFIX = ".journal"
_COMPACTING = ".compacting"  # a compaction's new file before its rename; not a journal to claim
# Room past compact_after in a journal file: the line that crosses it still fits.
_SLACK = 4096


@dataclass
class CrashRecord:
    """How often a job was running in a worker that died, since when, and the runs it was in:
    ``kills`` holds (the dead worker's journal name, ``<pid>-<tag>``; when the run started)."""

    crashes: int
    first_death: float
    kills: list[tuple[str, float]] = field(default_factory=list)


class CrashJournal:
    def __init__(
        self, directory: Path, *, retention: float = 7 * 24 * 3600.0, compact_after: int = 1 << 20
    ) -> None:
        if compact_after < 1:
            raise ConfigurationError("crash journal: compact_after must be ≥ 1 byte")
        self.directory = directory
        self.retention = retention
        self.compact_after = compact_after
        self.suspects: dict[str, CrashRecord] = {}
        self._running: dict[str, list[float]] = {}  # job id → start times of its runs in progress
        self._appended = 0
        self._file: lockfiles.MappedFile | None = None
        self._path: Path | None = None

    def open(self) -> dict[str, CrashRecord]:
        """Claim the journals of dead processes, start this process's own; return the suspects."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{os.getpid()}-{uuid.uuid4().hex[:8]}{_SUFFIX}"
            file = lockfiles.create_mapped(path, self.compact_after + _SLACK)
        except OSError as exc:
            raise ConfigurationError(
                f"crash journal: cannot write to {self.directory} ({exc.strerror}); "
                "set CONVEYOR_STATE_DIR to a writable directory (on Kubernetes an emptyDir)"
            ) from None
        self._file, self._path = file, path
        now = time.time()
        self._claim_others(now)
        self.suspects = {
            job: record for job, record in self.suspects.items() if now - record.first_death < self.retention
        }
        self._append(self._suspect_lines())
        return self.suspects

    def claim_dead(self) -> int:
        """Claim the journals of processes that died since this one opened; return how many.

        A sibling's death is not news to a process that opened before it: the broker hands the
        jobs it held to whoever still runs, maybe this process, before any replacement starts
        and claims them. Called when such a job arrives (a redelivery), so that a job that
        killed a sibling runs alone here too, and its crash count stays one count instead of one
        per process. What is absorbed is added to this journal as ``C``/``K`` lines of the
        increase only: whoever claims this journal sums the ``C`` lines of a job.
        """
        if self._path is None:
            return 0
        before = {job: (record.crashes, len(record.kills)) for job, record in self.suspects.items()}
        claimed = self._claim_others(time.time())
        if claimed:
            lines = []
            for job, record in self.suspects.items():
                crashes, kills = before.get(job, (0, 0))
                if record.crashes > crashes:
                    lines.append(f"C {job} {record.crashes - crashes} {record.first_death:.3f}\n")
                    lines += [f"K {job} {who} {when:.3f}\n" for who, when in record.kills[kills:]]
            self._append("".join(lines))
        return claimed

    def started(self, job_id: str) -> None:
        now = time.time()
        self._running.setdefault(job_id, []).append(now)
        self._append(f"S {job_id} {now:.3f}\n")

    def finished(self, job_id: str) -> None:
        starts = self._running.get(job_id)
        if starts:
            starts.pop()
            if not starts:
                del self._running[job_id]
        self._append(f"F {job_id}\n")

    def resolved(self, job_id: str) -> None:
        """The job ran to an outcome: it no longer counts as a suspect (here or for a claimer)."""
        if self.suspects.pop(job_id, None) is not None:
            self._append(f"R {job_id}\n")

    def close(self) -> None:
        """A clean exit: nothing was left running, and the suspects go to whoever claims next."""
        file, path = self._file, self._path
        self._file = self._path = None
        if file is None or path is None:
            return
        if not self.suspects:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        file.close()  # releases the lock: a suspect list left behind is claimed by the next process

    def _append(self, text: str) -> None:
        file = self._file
        if file is None or not text:
            return
        data = text.encode()
        if not file.append(data):
            # Full (compactions failed until now): a compaction writes what the journal means,
            # which already holds this line's change (the state is updated before the append).
            self._compact()
            if self._file is file:
                raise OSError(errno.ENOSPC, "crash journal: full, and it could not be compacted")
            return
        self._appended += len(data)
        if self._appended >= self.compact_after:
            self._compact()

    def _suspect_lines(self) -> str:
        return "".join(
            f"C {job} {r.crashes} {r.first_death:.3f}\n" + "".join(f"K {job} {w} {t:.3f}\n" for w, t in r.kills)
            for job, r in self.suspects.items()
        )

    def _compact(self) -> None:
        """Replace the journal by one that says only what it still means (see the module doc)."""
        old, path = self._file, self._path
        self._appended = 0  # a failed compaction is tried again only after as many bytes more
        if old is None or path is None:
            return
        state = self._suspect_lines() + "".join(
            f"S {job} {start:.3f}\n" for job, starts in self._running.items() for start in starts
        )
        try:
            self._file = lockfiles.replace_mapped(path, state.encode(), self.compact_after + _SLACK,
                                                  staging_suffix=_COMPACTING)
        except OSError:
            return  # the old journal stays whole and in use
        self._appended = len(state)
        old.close()  # the replaced file's lock goes with it

    def _claim_others(self, now: float) -> int:
        """Claim every journal but this process's own whose writer is dead; how many."""
        return sum(self._claim(other, now) for other in sorted(self.directory.glob(f"*{_SUFFIX}"))
                   if other != self._path)

    def _claim(self, path: Path, now: float) -> bool:
        with lockfiles.claim(path, staging_suffix=_COMPACTING) as journal:
            if journal is None:
                return False
            self._absorb(io.TextIOWrapper(journal, encoding="utf-8", errors="replace"), now, path.stem)
            return True

    def _absorb(self, lines: Iterable[str], death: float, worker: str) -> None:
        running: dict[str, int] = {}
        started: dict[str, float] = {}
        for line in lines:  # streamed: a journal is never read whole into memory
            if "\0" in line:
                break  # the end of what was written; a line cut short before it was never on record
            kind, _, rest = line.rstrip("\n").partition(" ")
            job, _, tail = rest.partition(" ")
            if not job:
                continue  # a line cut short by the death
            if kind == "S":
                running[job] = running.get(job, 0) + 1
                with contextlib.suppress(ValueError):
                    started[job] = float(tail)
            elif kind == "F" and running.get(job):
                running[job] -= 1
            elif kind == "R":
                self.suspects.pop(job, None)
            elif kind == "C":
                crashes, _, first = tail.partition(" ")
                with contextlib.suppress(ValueError):
                    self._add(job, int(crashes), float(first))
            elif kind == "K":
                who, _, when = tail.partition(" ")
                record = self.suspects.get(job)
                if record is not None:
                    with contextlib.suppress(ValueError):
                        record.kills.append((who, float(when)))
        for job, starts in running.items():
            if starts > 0:
                self._add(job, 1, death)
                self.suspects[job].kills.append((worker, started.get(job, death)))

    def _add(self, job: str, crashes: int, first_death: float) -> None:
        record = self.suspects.get(job)
        if record is None:
            self.suspects[job] = CrashRecord(crashes, first_death)
        else:
            record.crashes += crashes
            record.first_death = min(record.first_death, first_death)
