"""The crash guard's gate: ordinary jobs pass without an await while no suspect is around,
a suspect runs alone, and whatever the journal raises, the gate is left."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from conveyor.common.crash_journal import CrashJournal, CrashRecord
from conveyor.consumer.middleware.crash_guard import CrashGuardMiddleware, ExclusiveGate


class _Ctx:
    def __init__(self, job_id: str, redelivered: bool = False) -> None:
        self.job_id = job_id
        self.redelivered = redelivered


async def test_ordinary_jobs_enter_without_waiting_while_no_suspect_is_around() -> None:
    gate = ExclusiveGate()
    assert all(gate.try_shared() for _ in range(100))
    assert [gate.leave() for _ in range(100)] == [False] * 100, "nobody waits: nothing to wake"
    assert gate.try_shared() and not gate.leave()


async def test_a_waiting_suspect_stops_the_fast_path_and_goes_first() -> None:
    gate = ExclusiveGate()
    order: list[str] = []
    assert gate.try_shared()  # one ordinary job running

    async def suspect() -> None:
        await gate.exclusive()
        order.append("suspect")
        await asyncio.sleep(0)
        order.append("suspect done")
        await gate.release()

    async def ordinary() -> None:
        await gate.shared()
        order.append("ordinary")
        await gate.release()

    waiting = asyncio.create_task(suspect())
    await asyncio.sleep(0)
    assert not gate.try_shared(), "a suspect waits: no one else may slip in"
    late = asyncio.create_task(ordinary())
    await asyncio.sleep(0)
    assert order == []
    assert gate.leave(), "the first job leaves: the waiting suspect must be woken"
    await gate.wake()
    await asyncio.wait_for(asyncio.gather(waiting, late), 5)
    assert order == ["suspect", "suspect done", "ordinary"]
    assert gate.try_shared() and not gate.leave()


class _FullJournal(CrashJournal):
    """A journal on a full disk: every start and finish raises."""

    def started(self, job_id: str) -> None:
        raise OSError(28, "No space left on device")

    def finished(self, job_id: str) -> None:
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize("suspect", [False, True])
async def test_the_gate_is_left_whatever_the_journal_raises(tmp_path: Path, suspect: bool) -> None:
    guard = CrashGuardMiddleware(_FullJournal(tmp_path))
    if suspect:
        guard.journal.suspects["s"] = CrashRecord(1, 0.0)
    ran: list[str] = []

    async def handler(ctx: Any) -> None:
        ran.append(ctx.job_id)

    for _ in range(3):
        with pytest.raises(OSError):
            await guard.consume(_Ctx("s" if suspect else "o"), handler)  # type: ignore[arg-type]
    assert ran == [], "not run unrecorded"
    # Left each time: a suspect now gets its exclusive run at once.
    await asyncio.wait_for(guard.gate.exclusive(), 1)
    assert not guard.gate.leave()


async def test_a_failing_handler_is_journalled_finished_and_the_gate_left(tmp_path: Path) -> None:
    guard = CrashGuardMiddleware(CrashJournal(tmp_path))
    await guard.startup()

    async def boom(ctx: Any) -> None:
        raise ValueError("by design")

    for n in range(50):
        with pytest.raises(ValueError):
            await guard.consume(_Ctx(f"j{n}"), boom)  # type: ignore[arg-type]
    assert guard.journal._running == {}
    await asyncio.wait_for(guard.gate.exclusive(), 1)
    await guard.gate.release()
    await guard.shutdown()
    assert list(tmp_path.glob("*.journal")) == [], "nothing left running, nothing to claim"


@pytest.mark.parametrize("redelivered", [False, True])
async def test_a_redelivered_job_learns_of_a_sibling_that_died_running_it(tmp_path: Path, redelivered: bool) -> None:
    from conveyor.common.errors import CrashLoop
    from tests.unit.common.test_crash_journal import _die_while_running

    guard = CrashGuardMiddleware(CrashJournal(tmp_path), limit=1)
    await guard.startup()  # before the sibling's death: nothing to claim yet
    _die_while_running(tmp_path, running=["killer"])
    ran: list[str] = []

    async def handler(ctx: Any) -> None:
        ran.append(ctx.job_id)

    try:
        if redelivered:  # the broker gave it back after the sibling died: the guard claims and counts it
            with pytest.raises(CrashLoop, match="1 times"):
                await guard.consume(_Ctx("killer", redelivered=True), handler)
            assert ran == []
        else:  # a first delivery is no reason to look
            await guard.consume(_Ctx("killer"), handler)
            assert ran == ["killer"]
    finally:
        await guard.shutdown()
