"""Stall watchdog: notice when the event loop stops turning, say who blocked it, and act.

An ``async def`` handler that calls ``time.sleep`` or a blocking client freezes the whole
worker: no other job progresses, no heartbeat is answered (the broker soon drops the
connection and redelivers every in-flight job elsewhere), ``/healthz`` cannot answer. Nothing
*inside* the loop can notice, so a plain thread does:

* the loop bumps a timestamp every ``interval`` seconds (a tiny task);
* the thread looks at that timestamp; once it is older than ``warn_after`` it logs ``event loop
  blocked`` with the loop thread's current stack (which names the offending handler) and the
  ids of the jobs in flight, and counts a stall;
* once it is older than ``exit_after`` (when set) the process exits at once with
  ``EXIT_CODE``. By then the broker has given up on the connection or soon will, so every
  in-flight job is (or will be) redelivered to a healthy worker; a process that carried on
  after the block would only finish jobs whose acks can no longer land, running them twice.
  The supervisor (Kubernetes, systemd, ``--processes``) starts a fresh worker. A job that
  blocks every time is counted by the crash journal at each exit and dead-lettered as
  ``crash_loop`` after the crash limit (the broker's delivery limit is only the backstop).

``exit_after`` is off for an embedded ``Worker`` (exiting the host process is the caller's
decision); ``conveyor worker`` turns it on (``CONVEYOR_STALL_EXIT_AFTER``).

The same thread watches sync handlers: a thread still running past its job's time limit (it
keeps its slot and message until it returns, see ``consumer.threads``) is logged once, as
``sync handler overran its time limit``, with its job id and the thread's current stack; once
it has run ``exit_after`` past that limit, the process exits as for a blocked loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from conveyor.common.defaults import DEFAULT_STALL_WARN_AFTER

if TYPE_CHECKING:
    from conveyor.consumer.threads import Overrun

__all__ = ["EXIT_CODE", "StallWatchdog", "WatchdogConfig"]

log = logging.getLogger(__name__)

EXIT_CODE = 70  # EX_SOFTWARE: the process is broken, not the configuration
_STACK_FRAMES = 6  # the innermost frames: the blocking call and the handler that made it


@dataclass(frozen=True)
class WatchdogConfig:
    warn_after: float = DEFAULT_STALL_WARN_AFTER  # seconds without a loop turn before logging a stall; 0: off
    exit_after: float | None = None  # seconds before exiting the process; None: never
    interval: float = 0.25

    def __post_init__(self) -> None:
        from conveyor.common import bounds
        from conveyor.common.errors import ConfigurationError

        bounds.seconds("watchdog warn_after", self.warn_after, zero_ok=True)
        bounds.seconds("watchdog interval", self.interval)
        if self.exit_after is not None:
            if bounds.seconds("watchdog exit_after", self.exit_after) < self.warn_after:
                raise ConfigurationError("watchdog exit_after must be ≥ warn_after")

    @property
    def enabled(self) -> bool:
        return self.warn_after > 0


class StallWatchdog:
    """Start inside the running loop; ``stop()`` before the loop closes."""

    def __init__(
        self,
        config: WatchdogConfig,
        *,
        in_flight: Callable[[], list[str]] = list,
        on_stall: Callable[[], None] = lambda: None,
        exit_process: Callable[[int], None] = os._exit,
        overruns: Callable[[], Sequence[Overrun]] = list,
    ) -> None:
        self.config = config
        self._in_flight = in_flight
        self._on_stall = on_stall
        self._overruns = overruns
        self._reported: set[int] = set()  # overruns already logged (by key)
        self._exit = exit_process
        self._last_turn = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beat: asyncio.Task[None] | None = None
        self._loop_thread_id = 0
        self.stalls = 0

    @property
    def blocked_for(self) -> float:
        return max(0.0, time.monotonic() - self._last_turn)

    def start(self) -> None:
        if not self.config.enabled or self._thread is not None:
            return
        self._loop_thread_id = threading.get_ident()
        self._last_turn = time.monotonic()
        self._beat = asyncio.get_running_loop().create_task(self._heartbeat())
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="conveyor-stall-watchdog", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        beat, self._beat = self._beat, None
        if beat is not None:
            beat.cancel()
            await asyncio.wait({beat}, timeout=1.0)
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, 5.0)

    async def _heartbeat(self) -> None:
        while True:
            self._last_turn = time.monotonic()
            await asyncio.sleep(self.config.interval)

    def _watch(self) -> None:
        warned = False
        while not self._stop.wait(self.config.interval):
            if self._report_overruns():
                return
            blocked = self.blocked_for
            if blocked < self.config.warn_after:
                if warned:
                    log.warning("event loop running again", extra={"blocked_seconds": round(blocked, 3)})
                warned = False
                continue
            if not warned:
                warned = True
                self.stalls += 1
                self._on_stall()
                log.error(
                    "event loop blocked: a handler is calling blocking code on the loop",
                    extra={"blocked_seconds": round(blocked, 3), "in_flight_job_ids": self._jobs(),
                           "loop_stack": self._loop_stack()},
                )
            exit_after = self.config.exit_after
            if exit_after is not None and blocked >= exit_after:
                self._exit_now("event loop blocked too long; exiting so the broker redelivers the in-flight jobs",
                               {"blocked_seconds": round(blocked, 3)})
                return

    def _exit_now(self, message: str, extra: dict[str, object]) -> None:
        log.critical(message, extra={**extra, "exit_code": EXIT_CODE, "in_flight_job_ids": self._jobs()})
        for handler in logging.getLogger().handlers:
            handler.flush()
        self._exit(EXIT_CODE)

    def _report_overruns(self) -> bool:
        """Log each new overrun once; True when one ran ``exit_after`` past its limit and the
        process was told to exit."""
        try:
            overruns = list(self._overruns())
        except Exception:  # read from another thread: never crash the watchdog
            return False
        exit_after = self.config.exit_after
        for overrun in overruns:
            over_by = overrun.over_by()
            if exit_after is not None and over_by >= exit_after:
                # A thread cannot be stopped, and one that never returns would hold its slot and
                # message for good (on Pulsar for ever; on RabbitMQ until consumer_timeout, then
                # on the next worker). Ending the process is the one hard limit: the broker
                # redelivers, and the crash journal counts the job, so one that hangs every time
                # is dead-lettered as crash_loop.
                self._exit_now(f"{overrun.kind} handler still running past its time limit; exiting so the broker "
                               "redelivers the in-flight jobs",
                               {"job_id": overrun.job_id, "job_type": overrun.job_type, "time_limit": overrun.limit,
                                "over_seconds": round(over_by, 3)})
                return True
            if overrun.key in self._reported:
                continue
            self._reported.add(overrun.key)
            log.warning(
                "sync handler overran its time limit; its thread still runs and keeps its slot and message"
                if overrun.kind == "sync" else
                "async handler ignored its cancel at its time limit; it still runs and keeps its slot and message",
                extra={"job_id": overrun.job_id, "job_type": overrun.job_type, "time_limit": overrun.limit,
                       "over_seconds": round(over_by, 3), "thread_stack": _stack(overrun.thread_id)},
            )
        self._reported.intersection_update(o.key for o in overruns)
        return False

    def _jobs(self) -> list[str]:
        try:
            return self._in_flight()[:20]
        except Exception:  # read from another thread: a snapshot may race; never crash the watchdog
            return []

    def _loop_stack(self) -> str:
        return _stack(self._loop_thread_id)


def _stack(thread_id: int) -> str:
    """The innermost frames of a thread's current stack ("" when it has ended)."""
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return ""
    return "".join(traceback.format_stack(frame, limit=_STACK_FRAMES))
