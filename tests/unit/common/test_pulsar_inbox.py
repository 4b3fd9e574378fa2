"""LoopInbox: pulsar-client completions reach their futures, batched, from any thread."""

from __future__ import annotations

import asyncio
import threading

import _pulsar
import pytest
from pulsar.asyncio import PulsarException

from conveyor.common.transport.pulsar.inbox import LoopInbox


class CountingLoop:
    """Counts the self-pipe wake-ups asked of a real loop (call_soon_threadsafe)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.calls = 0
        self._original = loop.call_soon_threadsafe

        def counted(*args: object, **kwargs: object) -> object:
            self.calls += 1
            return self._original(*args, **kwargs)  # type: ignore[arg-type]

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]


async def test_completions_from_another_thread_resolve_their_futures_with_one_wake_up() -> None:
    loop = asyncio.get_running_loop()
    counter = CountingLoop(loop)
    inbox = LoopInbox.here()
    futures = [loop.create_future() for _ in range(200)]
    callbacks = [inbox.completion(f) for f in futures]

    def complete_all() -> None:  # a pulsar-client thread, while the loop is busy elsewhere
        for i, callback in enumerate(callbacks):
            callback(_pulsar.Result.Ok, i)

    thread = threading.Thread(target=complete_all)
    thread.start()
    thread.join()  # blocks the loop: every completion lands before the first run
    assert await asyncio.gather(*futures) == list(range(200))
    assert counter.calls == 1


async def test_a_failed_result_raises_pulsar_exception_with_its_code() -> None:
    inbox = LoopInbox.here()
    future = asyncio.get_running_loop().create_future()
    threading.Thread(target=inbox.completion(future), args=(_pulsar.Result.Timeout,)).start()
    with pytest.raises(PulsarException) as raised:
        await future
    assert raised.value.error() == _pulsar.Result.Timeout


async def test_a_cancelled_waiter_is_skipped_and_the_rest_still_complete() -> None:
    loop = asyncio.get_running_loop()
    inbox = LoopInbox.here()
    gone, kept = loop.create_future(), loop.create_future()
    gone.cancel()
    inbox.completion(gone)(_pulsar.Result.Ok, "lost")
    inbox.completion(kept)(_pulsar.Result.Ok, "kept")
    assert await kept == "kept"


async def test_completions_on_the_loops_own_thread_need_no_self_pipe() -> None:
    loop = asyncio.get_running_loop()
    counter = CountingLoop(loop)
    inbox = LoopInbox.here()
    future = loop.create_future()
    inbox.completion(future)(_pulsar.Result.Ok)  # e.g. a grouped ack, completed at once
    assert await future is None
    assert counter.calls == 0
