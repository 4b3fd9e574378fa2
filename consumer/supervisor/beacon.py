"""The worker process's side: tell the supervisor, once a second, whether it is ready.

A line ``<ready 0|1> <jobs in flight>`` on an inherited pipe (``FD_ENV`` names its descriptor).
The supervisor counts a worker as ready only while its lines keep coming, so a worker whose
loop is stuck stops being ready before its watchdog ends it. A pipe the supervisor no longer
reads (it died: ``kill -9``) makes the worker drain and exit instead of running on as an orphan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Mapping

__all__ = ["CHILD_ENV", "FD_ENV", "INTERVAL", "STOP_SIGNALS", "Beacon", "child_index"]

log = logging.getLogger(__name__)

CHILD_ENV = "CONVEYOR_WORKER_CHILD"  # the worker process's index under the supervisor (0…N-1)
FD_ENV = "CONVEYOR_SUPERVISOR_FD"
INTERVAL = 1.0
# What drains a worker or a supervisor. SIGHUP (a closed terminal or ssh session) killed one
# mid-job: the job came back, but the crash journal counted the death against it, so a few
# hang-ups dead-lettered a healthy job as crash_loop. There is nothing to reload.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def child_index(environ: Mapping[str, str] = os.environ) -> int | None:
    """This process's index under a supervisor; None when it is not a supervised worker."""
    value = environ.get(CHILD_ENV)
    return int(value) if value is not None and value.isdigit() else None


class Beacon:
    def __init__(
        self,
        fd: int,
        status: Callable[[], tuple[bool, int]],
        *,
        before: Callable[[], None] = lambda: None,
        orphaned: Callable[[], None] = lambda: None,
    ) -> None:
        """``status``: (ready, in flight); ``before`` runs before each report (metrics refresh);
        ``orphaned`` is called once when the supervisor is gone."""
        self._fd = fd
        self._status = status
        self._before = before
        self._orphaned = orphaned
        self._task: asyncio.Task[None] | None = None
        os.set_blocking(fd, False)  # never block the loop on a supervisor that reads slowly

    @classmethod
    def from_environment(cls, status: Callable[[], tuple[bool, int]], **hooks: Callable[[], None]) -> Beacon | None:
        value = os.environ.get(FD_ENV)
        return cls(int(value), status, **hooks) if value is not None and value.isdigit() else None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def report(self) -> bool:
        """Send one line; False when the supervisor is gone."""
        self._before()
        ready, in_flight = self._status()
        try:
            os.write(self._fd, f"{int(ready)} {in_flight}\n".encode())
        except BlockingIOError:
            pass  # the supervisor is behind; the next line will do
        except (BrokenPipeError, OSError):
            return False
        return True

    async def _run(self) -> None:
        while True:
            try:
                alive = self.report()
            except Exception:  # reporting must never take the worker down
                log.debug("supervisor report failed", exc_info=True)
                alive = True
            if not alive:
                log.warning("the supervisor is gone; draining")
                self._orphaned()
                return
            await asyncio.sleep(INTERVAL)
