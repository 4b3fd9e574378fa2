"""TimeLimit: one timer for many calls, expiring like asyncio.timeout."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.common.deadlines import TimeLimit


async def _hang(limit: TimeLimit, started: asyncio.Event | None = None) -> None:
    with limit():
        if started is not None:
            started.set()
        await asyncio.Event().wait()


async def test_a_call_past_its_limit_raises_timeout_error() -> None:
    with pytest.raises(TimeoutError):
        await _hang(TimeLimit(0.01))


async def test_calls_within_the_limit_return_and_leave_nothing_armed_for_them() -> None:
    limit = TimeLimit(60)
    for _ in range(3):
        with limit():
            await asyncio.sleep(0)
    assert not limit._running


async def test_every_overdue_call_expires_and_a_finished_one_is_never_cancelled() -> None:
    limit = TimeLimit(0.01)
    with limit():  # done before the timer fires for it
        pass
    results = await asyncio.gather(_hang(limit), _hang(limit), return_exceptions=True)
    assert [type(r) for r in results] == [TimeoutError, TimeoutError]
    assert not limit._running


async def test_a_cancel_from_elsewhere_stays_a_cancellation() -> None:
    started = asyncio.Event()
    task = asyncio.create_task(_hang(TimeLimit(60), started))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        TimeLimit(0)


def test_one_limit_used_on_one_event_loop_after_another_times_out_on_each() -> None:
    # The limit remembers its loop (no get_running_loop per call); a stopped loop must not
    # keep it: a later loop gets its own timer and its own tasks cancelled.
    limit = TimeLimit(0.01)
    for _ in range(3):
        with pytest.raises(TimeoutError):
            asyncio.run(_hang(limit))
        assert not limit._running


async def test_a_limit_outside_any_task_is_refused_even_once_it_knows_a_loop() -> None:
    limit = TimeLimit(60)
    with limit():
        pass
    loop = asyncio.get_running_loop()
    outside: list[BaseException] = []

    def call_outside_a_task() -> None:
        try:
            with limit():
                pass
        except RuntimeError as exc:
            outside.append(exc)

    done = loop.create_future()
    loop.call_soon(lambda: (call_outside_a_task(), done.set_result(None)))
    await done
    assert len(outside) == 1 and "inside a task" in str(outside[0])


async def test_a_block_cut_at_its_limit_is_overdue_only_until_it_ends() -> None:
    limit = TimeLimit(0.05)

    async def obedient() -> None:
        with limit("obedient"):
            await asyncio.sleep(10)

    with pytest.raises(TimeoutError):
        await obedient()
    assert limit.overdue == {}, "a block that ended at its cancel is not overdue"
    went_on = asyncio.Event()
    release = asyncio.Event()

    async def stubborn() -> None:
        with limit("stubborn"):
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                went_on.set()  # swallowed: the block goes on past its limit
                await release.wait()

    task = asyncio.ensure_future(stubborn())
    await went_on.wait()
    assert [call.label for call in limit.overdue] == ["stubborn"]
    release.set()
    await task
    assert limit.overdue == {}
