"""Start N worker processes, keep them running, stop them together (see the package docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.multiprocess import mark_process_dead

from conveyor.consumer.supervisor.beacon import CHILD_ENV, FD_ENV, INTERVAL, STOP_SIGNALS
from conveyor.consumer.supervisor.http import SupervisorHttp
from conveyor.consumer.supervisor.policy import RestartPolicy

__all__ = ["KILL_AFTER", "Supervisor"]

log = logging.getLogger(__name__)

# A worker whose last report is older than this is not ready (its loop is stuck, or it is gone).
_STALE_AFTER = 5 * INTERVAL
# Past its grace period a worker still settles (bounded by confirms, see Worker.drain): this much
# longer, then it is killed and the broker redelivers what it held.
KILL_AFTER = 30.0
_METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass
class _Slot:
    """One worker process position: the process in it now, and its history."""

    index: int
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    ready: bool = False
    in_flight: int = 0
    beat: float = 0.0
    restarts: int = 0
    streak: int = 0
    exit_code: int | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def is_ready(self, now: float) -> bool:
        return self.alive and self.ready and now - self.beat < _STALE_AFTER

    def state(self, now: float) -> dict[str, Any]:
        return {"index": self.index, "pid": self.process.pid if self.alive and self.process else None,
                "ready": self.is_ready(now), "in_flight": self.in_flight, "restarts": self.restarts}


class Supervisor:
    def __init__(
        self,
        command: Sequence[str],
        processes: int,
        *,
        grace_period: float,
        http_host: str = "127.0.0.1",
        http_port: int = 0,
        policy: RestartPolicy | None = None,
        env: Mapping[str, str] | None = None,
        announce: Callable[[str], None] = print,
        kill_after: float = KILL_AFTER,
    ) -> None:
        """``command`` starts one worker process (it reads ``beacon.CHILD_ENV``); ``http_port``
        0: no HTTP endpoints."""
        if processes < 1:
            raise ValueError("processes must be ≥ 1")
        self.command = list(command)
        self.policy = policy or RestartPolicy()
        self.slots = [_Slot(index) for index in range(processes)]
        self.error: str | None = None  # why the supervisor gave up, if it did
        self._grace_period = grace_period
        self._kill_after = kill_after
        self._http_host, self._http_port = http_host, http_port
        self._env = dict(os.environ if env is None else env)
        self._announce = announce
        self._stopping = asyncio.Event()
        self._metrics_dir: Path | None = None
        self._listeners: set[asyncio.Task[None]] = set()
        self.registry = CollectorRegistry()
        self._restarts = Counter("conveyor_worker_restarts", "Worker processes restarted by the supervisor",
                                 registry=self.registry)
        Gauge("conveyor_worker_processes", "Worker processes running under the supervisor",
              registry=self.registry).set_function(lambda: sum(slot.alive for slot in self.slots))

    # -- state -------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        now = time.monotonic()
        return not self._stopping.is_set() and all(slot.is_ready(now) for slot in self.slots)

    def states(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [slot.state(now) for slot in self.slots]

    def stop(self) -> None:
        """Drain every worker process and return from ``run`` (``STOP_SIGNALS`` call this)."""
        self._stopping.set()

    # -- lifecycle -----------------------------------------------------------------------
    async def run(self) -> int:
        """Until ``stop``: keep the workers running. Then drain them all; 0 when every one
        exited cleanly, 1 otherwise (``error`` says why when the supervisor gave up)."""
        loop = asyncio.get_running_loop()
        directory = Path(tempfile.mkdtemp(prefix="conveyor-supervisor-"))
        self._metrics_dir = directory
        http = None
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.stop)
        try:
            if self._http_port:
                http = SupervisorHttp(metrics_dir=directory, own=self.registry, processes=self.states,
                                      ready=lambda: self.ready, host=self._http_host, port=self._http_port)
                await http.start()
            keepers = [loop.create_task(self._keep(slot)) for slot in self.slots]
            self._announce(
                f"supervisor {os.getpid()}: {len(self.slots)} worker processes"
                + (f"; http://{self._http_host}:{http.port}/metrics" if http else "")
            )
            await self._stopping.wait()
            self._announce("draining all worker processes…")
            self._signal_all(signal.SIGTERM)
            _, pending = await asyncio.wait(keepers, timeout=self._grace_period + self._kill_after)
            if pending:
                log.error("worker processes still running after the grace period; killing them",
                          extra={"pids": [s.process.pid for s in self.slots if s.alive and s.process]})
                self._signal_all(signal.SIGKILL)
                await asyncio.wait(pending, timeout=10.0)
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)
            if http is not None:
                await http.stop()
            shutil.rmtree(directory, ignore_errors=True)
        failed = [slot for slot in self.slots if slot.exit_code != 0]
        if failed and self.error is None:
            self.error = "; ".join(f"worker process {slot.index} {_describe(slot.exit_code)}" for slot in failed)
        return 1 if failed or self.error else 0

    async def _keep(self, slot: _Slot) -> None:
        """Run the slot's process; restart it when it dies, until stop or a crash loop."""
        while True:
            try:
                process = await self._spawn(slot)
            except OSError as exc:  # the interpreter itself cannot start: no restart will help
                self.error = f"cannot start worker process {slot.index}: {exc}"
                self.stop()
                return
            code = await process.wait()
            uptime = time.monotonic() - slot.started
            slot.ready, slot.exit_code = False, code
            if self._stopping.is_set() and code == -signal.SIGTERM:
                # Our SIGTERM reached it before its handler was in place (it was still starting):
                # it had taken no job yet, so that is a clean end too.
                slot.exit_code = 0
            assert self._metrics_dir is not None
            # Its live gauges go; its counts stay (prometheus-client ships these untyped).
            mark_process_dead(process.pid, str(self._metrics_dir))  # type: ignore[no-untyped-call]
            if self._stopping.is_set():
                return
            slot.streak = self.policy.streak(slot.streak, uptime)
            if self.policy.gives_up(slot.streak):
                self.error = (
                    f"worker process {slot.index} {_describe(code)} {slot.streak} times in a row, each within "
                    f"{self.policy.healthy_after:g}s of its start; giving up (see its errors above)"
                )
                self.stop()
                return
            delay = self.policy.delay(slot.streak)
            slot.restarts += 1
            self._restarts.inc()
            log.warning(f"worker process {slot.index} (pid {process.pid}) {_describe(code)}; "
                        f"restarting it in {delay:g}s",
                        extra={"index": slot.index, "pid": process.pid, "exit_code": code, "restart_in": delay})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return

    async def _spawn(self, slot: _Slot) -> asyncio.subprocess.Process:
        read_fd, write_fd = os.pipe()
        env = {**self._env, CHILD_ENV: str(slot.index), FD_ENV: str(write_fd), _METRICS_ENV: str(self._metrics_dir)}
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command, env=env, pass_fds=(write_fd,), stdin=asyncio.subprocess.DEVNULL
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        slot.process, slot.started, slot.ready, slot.beat, slot.in_flight = process, time.monotonic(), False, 0.0, 0
        listener = asyncio.get_running_loop().create_task(self._listen(slot, process, read_fd))
        self._listeners.add(listener)
        listener.add_done_callback(self._listeners.discard)
        if self._stopping.is_set():  # stopped while it was starting
            _send(process, signal.SIGTERM)
        return process

    async def _listen(self, slot: _Slot, process: asyncio.subprocess.Process, read_fd: int) -> None:
        """Read the worker's ``<ready> <in flight>`` lines (``beacon``) until it exits."""
        reader = asyncio.StreamReader()
        pipe, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
        )
        try:
            while line := await reader.readline():
                ready, _, in_flight = line.decode(errors="replace").strip().partition(" ")
                if slot.process is process and in_flight.isdigit():
                    slot.ready, slot.in_flight, slot.beat = ready == "1", int(in_flight), time.monotonic()
        finally:
            pipe.close()

    def _signal_all(self, sig: signal.Signals) -> None:
        for slot in self.slots:
            if slot.alive and slot.process is not None:
                _send(slot.process, sig)


def _send(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)


def _describe(code: int | None) -> str:
    if code is None:
        return "never started"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"
