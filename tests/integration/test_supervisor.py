"""The supervisor with stand-in worker processes (tiny Python programs): real processes, real
signals, a real pipe. The ``conveyor worker`` children are in tests/e2e/test_cli_processes.py."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import pytest

from conveyor.common.settings import Settings
from conveyor.consumer.cli.worker import restart_policy
from conveyor.consumer.supervisor import RestartPolicy, Supervisor

# A stand-in worker: reports "<ready> 0" on the supervisor's pipe every 50 ms until SIGTERM,
# then exits with EXIT; STUBBORN ignores SIGTERM (a worker stuck past its grace period).
CHILD = """
import os, signal, sys, time
fd = int(os.environ["CONVEYOR_SUPERVISOR_FD"])
mode = sys.argv[1]
if mode == "crash":
    sys.exit(3)
stop = []
if mode == "starting":  # SIGTERM before its handler is in place: killed by it, at the start
    while True:
        os.write(fd, b"1 0\\n")
        time.sleep(0.05)
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else (lambda *_: stop.append(1)))
ready = "0" if mode == "unready" else "1"
while not stop:
    os.write(fd, (ready + " 0\\n").encode())
    time.sleep(0.05)
sys.exit(0)
"""


def supervisor(mode: str, *, processes: int = 2, **kwargs: object) -> Supervisor:
    return Supervisor([sys.executable, "-c", CHILD, mode], processes, grace_period=0.2, announce=lambda _: None,
                      **kwargs)  # type: ignore[arg-type]


async def until(predicate: object, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_workers_that_drain_on_sigterm_end_the_run_with_0_and_the_run_directory_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    running = supervisor("clean")
    run = asyncio.create_task(running.run())
    await until(lambda: running.ready)
    assert len({state["pid"] for state in running.states()}) == 2
    assert list(tmp_path.iterdir()), "the metrics directory exists while the workers run"
    running.stop()
    assert await run == 0 and running.error is None
    assert list(tmp_path.iterdir()) == []


async def test_a_worker_stopped_before_its_signal_handler_is_in_place_counts_as_a_clean_end() -> None:
    running = supervisor("starting")
    run = asyncio.create_task(running.run())
    await until(lambda: running.ready)
    running.stop()
    assert await run == 0 and running.error is None


async def test_a_worker_not_ready_keeps_the_whole_supervisor_unready() -> None:
    running = supervisor("unready", processes=1)
    run = asyncio.create_task(running.run())
    await until(lambda: running.states()[0]["pid"] is not None)
    await asyncio.sleep(0.3)  # several reports
    assert not running.ready
    running.stop()
    assert await run == 0


async def test_workers_still_running_past_the_grace_period_are_killed_and_the_run_fails() -> None:
    running = supervisor("stubborn", kill_after=0.5)
    run = asyncio.create_task(running.run())
    await until(lambda: running.ready)
    running.stop()
    assert await asyncio.wait_for(run, 15) == 1
    assert running.error == "worker process 0 was killed by SIGKILL; worker process 1 was killed by SIGKILL"


async def test_a_worker_that_dies_at_every_start_is_restarted_with_backoff_then_given_up() -> None:
    policy = RestartPolicy(first_delay=0.01, max_delay=0.02, max_failures=3)
    running = supervisor("crash", processes=1, policy=policy)
    assert await asyncio.wait_for(running.run(), 30) == 1
    assert running.error is not None and running.error.startswith(
        "worker process 0 exited with code 3 3 times in a row, each within 10s of its start; giving up")
    assert running.states()[0]["restarts"] == 2


def test_the_supervisor_gives_the_crash_guard_its_crash_limit_before_it_gives_up() -> None:
    assert restart_policy(Settings()).max_failures == 5
    assert restart_policy(Settings(crash_limit=6)).max_failures == 8
    assert RestartPolicy().delay(20) == 30.0, "the documented cap"

