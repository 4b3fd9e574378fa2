"""Helpers shared by both sides of every scenario, so the harness itself is never the difference."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "QUORUM",
    "WorkerRun",
    "cli_worker",
    "delete_queues",
    "percentile",
    "run_windowed",
    "run_worker_process",
    "sweep_prefix",
    "wait_for_broker",
]

ROOT = Path(__file__).resolve().parent.parent
QUORUM = {"x-queue-type": "quorum"}


async def run_windowed(
    publish_one: Callable[[int], Awaitable[object]], n: int, window: int
) -> tuple[float, float]:
    """Call ``publish_one(0..n-1)`` with at most ``window`` awaiting at once.

    Returns (wall seconds, CPU seconds of this process over the same span).

    ``window == 1`` is a plain sequential ``await`` loop. Otherwise ``window`` lanes pull the
    next index from a shared counter (a sliding window: a slow confirm never stalls the others).
    The same function drives Conveyor and raw aio-pika, so both pay the same harness cost.
    """
    started, cpu = time.perf_counter(), time.process_time()
    if window <= 1:
        for i in range(n):
            await publish_one(i)
        return time.perf_counter() - started, time.process_time() - cpu
    counter = itertools.count()

    async def lane() -> None:
        while (i := next(counter)) < n:
            await publish_one(i)

    await asyncio.gather(*(lane() for _ in range(min(window, n))))
    return time.perf_counter() - started, time.process_time() - cpu


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of an unsorted sequence."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


async def delete_queues(url: str, names: Sequence[str], exchanges: Sequence[str] = ()) -> None:
    """Delete queues/exchanges by name; a missing one is fine (each on its own channel)."""
    import aio_pika  # here: a worker subprocess imports this module, and its RSS must be its own

    connection = await aio_pika.connect(url, timeout=15)
    try:
        for name in names:
            channel = await connection.channel()
            try:
                await channel.queue_delete(name)
            except Exception:
                pass
            finally:
                if not channel.is_closed:
                    await channel.close()
        for name in exchanges:
            channel = await connection.channel()
            try:
                await channel.exchange_delete(name)
            except Exception:
                pass
            finally:
                if not channel.is_closed:
                    await channel.close()
    finally:
        await connection.close()


async def wait_for_broker(url: str, timeout: float = 120.0) -> float:
    """Block until an AMQP connection succeeds (a shared test broker may be mid-restart).

    Returns the seconds waited; raises the last connection error after ``timeout``.
    """
    import aio_pika  # see delete_queues

    started = time.monotonic()
    while True:
        try:
            connection = await aio_pika.connect(url, timeout=10)
        except Exception:
            if time.monotonic() - started > timeout:
                raise
            await asyncio.sleep(2.0)
            continue
        await connection.close()
        return time.monotonic() - started


def _rabbitmqctl(*args: str) -> list[str]:
    """First column of ``rabbitmqctl -q ARGS`` on the broker's node; an error if it cannot run.

    The node is the RabbitMQ 4.x of ``scripts/services/rabbitmq.sh`` (its ``ctl`` runs the
    node's own ``rabbitmqctl``); ``CONVEYOR_RABBITMQCTL`` names another command for a broker
    the script did not start.
    """
    override = os.environ.get("CONVEYOR_RABBITMQCTL", "").strip()
    command = shlex.split(override) if override else ["bash", str(ROOT / "scripts" / "services" / "rabbitmq.sh"), "ctl"]
    try:
        out = subprocess.run([*command, "-q", *args], capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"rabbitmqctl {args[0]} could not run ({' '.join(command)}): {exc}") from exc
    if out.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {args[0]} failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return [line.split("\t")[0].strip() for line in out.stdout.splitlines() if line.strip()]


async def sweep_prefix(url: str, prefix: str) -> tuple[list[str], list[str]]:
    """Delete every queue and exchange whose name starts with ``prefix`` (rabbitmqctl lists them).

    The per-scenario cleanups already delete the names they know; this catches whatever a
    library declared on its own (delay tiers, DLQs, Celery/Dramatiq side queues).
    """
    queues = [q for q in _rabbitmqctl("list_queues", "name", "--no-table-headers") if q.startswith(prefix)]
    exchanges = [e for e in _rabbitmqctl("list_exchanges", "name", "--no-table-headers") if e.startswith(prefix)]
    if queues or exchanges:
        await delete_queues(url, queues, exchanges)
    return queues, exchanges


@dataclass
class WorkerRun:
    """What a worker subprocess reported (its last stdout line is one JSON object)."""

    result: dict[str, Any]
    stderr_tail: str


@functools.cache
def _compile_sources() -> None:
    """Byte-compile the project's sources once, as ``pip install`` and the Dockerfile's
    ``compileall`` do for a deployed Conveyor. Under PYTHONDONTWRITEBYTECODE (set on this
    machine) a worker subprocess would otherwise compile every Conveyor module at start, and
    the compiler's memory would count in its peak RSS: about 1 MiB that an installed worker
    does not use (issue 18). The raw loops' bench modules are compiled the same way."""
    folders = [str(ROOT / name) for name in ("common", "schemas", "producer", "consumer", "conveyor", "bench")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *folders], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)


def _spawn(module: str, spec: dict[str, Any], stderr: Any) -> subprocess.Popen[str]:
    _compile_sources()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return subprocess.Popen(
        [sys.executable, "-m", module, json.dumps(spec)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,  # a file, not a pipe: a chatty worker must never block on a full pipe
        text=True,
    )


async def run_worker_process(
    module: str,
    spec: dict[str, Any],
    *,
    timeout: float,
    after_ready: Callable[[], Awaitable[object]] | None = None,
) -> WorkerRun:
    """Start ``python -m module spec``; wait for ``READY``, run ``after_ready``, collect its JSON.

    The worker runs in its own process so its peak RSS is its own and it never shares an
    event loop (or a core's worth of GIL) with the publisher.
    """
    errfile = tempfile.TemporaryFile(mode="w+t")
    proc = await asyncio.to_thread(_spawn, module, spec, errfile)
    stdout_lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            line = await asyncio.wait_for(
                asyncio.to_thread(proc.stdout.readline), max(0.1, deadline - time.monotonic())
            )
            if not line:
                break
            stdout_lines.append(line)
            if line.strip() == "READY":
                if after_ready is not None:
                    await after_ready()
                after_ready = None
        await asyncio.wait_for(asyncio.to_thread(proc.wait), max(1.0, deadline - time.monotonic()))
    except TimeoutError:
        proc.kill()
        await asyncio.to_thread(proc.wait)
        err = _read_all(errfile)
        raise RuntimeError(f"{module} timed out after {timeout:.0f}s; stderr tail:\n{err[-3000:]}") from None
    err = _read_all(errfile)
    payload = next((ln for ln in reversed(stdout_lines) if ln.startswith("{")), None)
    if proc.returncode != 0 or payload is None:
        raise RuntimeError(f"{module} failed (exit {proc.returncode}); stderr tail:\n{err[-3000:]}")
    return WorkerRun(result=json.loads(payload), stderr_tail=err[-2000:])


def _read_all(handle: Any) -> str:
    handle.seek(0)
    text = handle.read()
    handle.close()
    return str(text)


def _status_mib(field: str) -> float | None:
    """A ``kB`` field of /proc/self/status in MiB; None where /proc is missing."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_mib() -> float:
    """This process's peak resident set size, in MiB.

    ``VmHWM`` from /proc/self/status, not ``ru_maxrss``: Linux carries the pre-``exec`` image's
    peak into ``ru_maxrss``, so a child spawned from a 50 MiB harness would report at least
    50 MiB whatever it used itself. ``ru_maxrss`` is the fallback off Linux.
    """
    peak = _status_mib("VmHWM:")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mib() -> float:
    """This process's resident set size now (``VmRSS``), in MiB; 0.0 where /proc is missing."""
    return _status_mib("VmRSS:") or 0.0


async def finish_raw_worker(done: asyncio.Event, state: dict[str, float], n: int, spec: dict[str, Any], latencies: list[float]) -> dict[str, Any]:
    """Wait for the raw loop's ``n``-th ack (or the timeout) and build its result."""
    try:
        await asyncio.wait_for(done.wait(), float(spec["timeout"]))
    except TimeoutError:
        pass
    result: dict[str, Any] = {"completed": state["count"]}
    if state["count"] >= n:
        result["seconds"] = state["last"] - state["first"]
        result["cpu_seconds"] = state["cpu_last"] - state["cpu_first"]
    if spec["mode"] == "latency":
        result["latencies"] = latencies
    return result


def emit(result: dict[str, Any]) -> None:
    """The worker subprocess's last stdout line."""
    result.setdefault("peak_rss_mib", round(peak_rss_mib(), 1))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def ready() -> None:
    sys.stdout.write("READY\n")
    sys.stdout.flush()


@contextlib.contextmanager
def cli_worker(broker: str, prefetch: int, **overrides: Any) -> Iterator[tuple[Any, Any]]:
    """(WorkerConfig, redactor) as ``conveyor worker --concurrency P --prefetch P`` builds them,
    no more and no less: ``WorkerConfig.from_settings`` (so the crash guard and its journal are
    on, as the CLI's default state directory turns them on), the stall watchdog's exit, and
    log lines masked by the command's ``Redactor``. The state directory is a fresh one on the
    same filesystem as the CLI's default (``~/.local/state``), removed afterwards.
    ``overrides``: WorkerConfig fields the scenario needs (e.g. a breaker that never trips).
    """
    from dataclasses import replace

    from conveyor.common.secrets import Redactor
    from conveyor.common.settings import Settings
    from conveyor.consumer.worker import WorkerConfig

    base = Path.home() / ".local" / "state"
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-", dir=base) as state_dir:
        settings = Settings(concurrency=prefetch, prefetch=prefetch, state_dir=Path(state_dir))
        config = replace(WorkerConfig.from_settings(settings), **overrides)
        assert config.state_dir is not None  # the crash guard is on, as in the CLI
        yield config, Redactor.from_settings(settings, broker)
