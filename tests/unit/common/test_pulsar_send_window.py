"""SendWindow = common.tasks.Slots (also the worker's per-delivery slots): at most ``size`` holders, FIFO waiters, no slot lost to a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.common.tasks import Slots as SendWindow


def test_free_slots_are_taken_without_waiting_and_given_back() -> None:
    window = SendWindow(2)
    assert window.try_take() and window.try_take()
    assert not window.try_take()  # full
    window.give()
    assert window.free == 1 and window.try_take()


def test_a_window_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError):
        SendWindow(0)


async def test_never_more_in_flight_than_the_window_with_many_senders() -> None:
    window, in_flight, peak, done = SendWindow(3), 0, 0, 0

    async def send(i: int) -> None:
        nonlocal in_flight, peak, done
        if not window.try_take():
            await window.take()
        try:
            in_flight += 1
            peak = max(peak, in_flight)
            for _ in range(i % 3):
                await asyncio.sleep(0)
            in_flight -= 1
            done += 1
        finally:
            window.give()

    await asyncio.gather(*(send(i) for i in range(100)))
    assert (peak, done, window.free) == (3, 100, 3)


async def test_waiters_get_slots_in_arrival_order_and_no_one_overtakes_them() -> None:
    window = SendWindow(1)
    assert window.try_take()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await window.take()
        order.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
    await asyncio.sleep(0)
    window.give()  # to waiter 0, not to a newcomer
    assert not window.try_take()
    for _ in range(3):
        await asyncio.sleep(0)
        window.give()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2] and window.free == 1


async def test_a_cancelled_waiter_loses_its_place_and_no_slot() -> None:
    window = SendWindow(1)
    assert window.try_take()
    cancelled = asyncio.create_task(window.take())
    second = asyncio.create_task(window.take())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    window.give()
    await asyncio.wait_for(second, 1)  # the slot went past the cancelled waiter
    window.give()
    assert window.free == 1


async def test_a_slot_handed_to_a_waiter_cancelled_at_that_moment_goes_to_the_next() -> None:
    window = SendWindow(1)
    assert window.try_take()
    first = asyncio.create_task(window.take())
    second = asyncio.create_task(window.take())
    await asyncio.sleep(0)
    window.give()  # first is handed the slot ...
    first.cancel()  # ... and cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    window.give()
    assert window.free == 1
