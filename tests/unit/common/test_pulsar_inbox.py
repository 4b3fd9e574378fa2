"""LoopInbox: pulsar-client completions reach their futures, batched, from any thread; Completion:
a result the client gives before its call returns is read without a future."""

from __future__ import annotations

import asyncio
import threading

import _pulsar
import pytest
from pulsar.asyncio import PulsarException

from conveyor.common.transport.pulsar.inbox import Completion, LoopInbox


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


async def test_a_completion_called_back_at_once_needs_no_future_and_no_wake_up() -> None:
    loop = asyncio.get_running_loop()
    counter = CountingLoop(loop)
    done = Completion(LoopInbox.here())
    done(_pulsar.Result.Ok)  # a grouped ack: the client calls back inside acknowledge_async
    before = len(loop._ready)  # type: ignore[attr-defined]
    await done.wait()
    assert len(loop._ready) == before  # type: ignore[attr-defined]  # nothing was scheduled
    assert counter.calls == 0


async def test_a_completion_called_back_later_from_the_clients_thread_settles_wait() -> None:
    done = Completion(LoopInbox.here())
    waiting = asyncio.ensure_future(done.wait())
    await asyncio.sleep(0)  # wait() has published its future
    assert not waiting.done()
    threading.Thread(target=done, args=(_pulsar.Result.Ok,)).start()
    await asyncio.wait_for(waiting, 5)


@pytest.mark.parametrize("later", [False, True], ids=["at-once", "later"])
async def test_a_failed_completion_raises_pulsar_exception_with_its_code(later: bool) -> None:
    done = Completion(LoopInbox.here())
    if not later:
        done(_pulsar.Result.AlreadyClosed)
    else:
        asyncio.get_running_loop().call_later(0.01, done, _pulsar.Result.AlreadyClosed)
    with pytest.raises(PulsarException) as raised:
        await done.wait()
    assert raised.value.error() == _pulsar.Result.AlreadyClosed


async def test_a_completion_that_lands_while_wait_publishes_its_future_is_read_once() -> None:
    """The race: the callback stores its result after wait() looked, before wait() looks again.
    wait() then returns on the result and cancels its future, so the inbox skips it."""
    loop = asyncio.get_running_loop()
    inbox = LoopInbox.here()
    done = Completion(inbox)
    original = loop.create_future

    def create_future_then_call_back() -> asyncio.Future[object]:
        future = original()
        loop.create_future = original  # type: ignore[method-assign]
        done._future = future  # what wait() is about to do; the client thread sees it ...
        done(_pulsar.Result.Ok)  # ... and calls back right then
        return future

    loop.create_future = create_future_then_call_back  # type: ignore[method-assign]
    await done.wait()
    await asyncio.sleep(0)  # the inbox run the callback scheduled
    assert done._future is not None and done._future.cancelled()
