"""Which outcome an exception means: remembered per exception type, never different from the table."""

from __future__ import annotations

import asyncio
import itertools
import threading

import pytest
from pydantic import BaseModel

from conveyor.common.clock import SystemClock
from conveyor.common.errors import (
    CircuitOpen,
    JobCancelled,
    JobTimeout,
    MalformedMessage,
    PermanentError,
    RejectedMessage,
    RetryableError,
)
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.outcome import Outcome, OutcomeKind
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.transport.base import Delivery
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer import processor as processor_module
from conveyor.consumer.payloads import PayloadResolver
from conveyor.consumer.processor import _CLASSIFICATION, Processor
from conveyor.consumer.threads import HandlerThreads
from conveyor.producer.producer import Producer
from conveyor.schemas.registry import SchemaTooNew


def _processor() -> Processor:
    return Processor(registry=JobRegistry(), middlewares=[], payloads=PayloadResolver.for_store(None),
                     clock=SystemClock(), worker_id="w", max_message_bytes=1 << 20)


def _by_table(error: type[BaseException]) -> tuple[OutcomeKind, str | None]:
    return next((kind, reason) for base, kind, reason in _CLASSIFICATION if isinstance(error("x"), base))


class _SubPermanent(PermanentError):
    pass


class _SubRetryable(RetryableError):
    pass


class _SubTimeout(JobTimeout, ValueError):
    pass


KINDS: list[type[Exception]] = [
    Exception, ValueError, KeyError, ConnectionError, RetryableError, _SubRetryable, PermanentError, _SubPermanent,
    JobTimeout, _SubTimeout, RejectedMessage, MalformedMessage, SchemaTooNew, JobCancelled, CircuitOpen,
]


@pytest.mark.parametrize("order", [KINDS, KINDS[::-1], KINDS[1::2] + KINDS[::2]])
def test_each_exception_type_gets_the_tables_first_match_whatever_came_before(order: list[type[Exception]]) -> None:
    """A subclass asked after its base (and the other way round) must not inherit a remembered answer."""
    processor = _processor()
    for error in order * 2:  # the second time from memory
        assert processor._classification(error) == _by_table(error), error


def test_exception_classes_made_on_the_fly_do_not_grow_the_memory_without_bound() -> None:
    processor = _processor()
    made = [type(f"Made{i}", (PermanentError if i % 2 else ValueError,), {}) for i in range(1000)]
    for error in itertools.chain(made, made):
        assert processor._classification(error) == _by_table(error)
    assert len(processor._classes) == processor_module._REMEMBERED_CLASSES


class _Ping(BaseModel):
    n: int


BASE_EXCEPTIONS: list[type[BaseException]] = [
    KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError, BaseException,
]


async def _one_delivery(jobs: JobRegistry) -> Delivery:
    broker = MemoryBroker()
    async with Producer.for_registry(MemoryTransport(broker), jobs) as producer:
        await producer.publish("t.ping", {"n": 1})
    reader = MemoryTransport(broker)
    await reader.connect()
    delivery = await reader.get(DEFAULT_QUEUE)
    assert delivery is not None
    return delivery


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
@pytest.mark.parametrize("error", BASE_EXCEPTIONS, ids=lambda error: error.__name__)
async def test_a_handlers_own_base_exception_is_a_failed_attempt_never_a_crash_or_a_free_release(
    error: type[BaseException], sync: bool
) -> None:
    # Let through, KeyboardInterrupt and SystemExit took the worker's event loop down,
    # GeneratorExit and BaseException left the delivery unsettled for good, and a handler's own
    # CancelledError gave the message back unspent: redelivered at once, for ever.
    jobs = JobRegistry()
    entered, release = threading.Event(), threading.Event()

    def raising(payload: _Ping, ctx: JobContext) -> None:
        entered.set()
        release.wait(10)  # until the loop waits for this thread: asyncio hands the error over then
        raise error("raised by the handler itself")

    async def raising_async(payload: _Ping, ctx: JobContext) -> None:
        raise error("raised by the handler itself")

    jobs.job("t.ping", model=_Ping)(raising if sync else raising_async)
    processor = Processor(registry=jobs, middlewares=[], payloads=PayloadResolver.for_store(None),
                          clock=SystemClock(), worker_id="w", max_message_bytes=1 << 20, threads=HandlerThreads(1))
    delivery = await _one_delivery(jobs)

    async def processed() -> Outcome | BaseException:  # a task of its own, as the worker's deliveries
        try:
            return await processor.process(delivery)
        except BaseException as exc:  # caught inside the task: asyncio never sees it
            return exc

    task = asyncio.create_task(processed())
    if sync:
        assert await asyncio.to_thread(entered.wait, 10)
        release.set()
    outcome = await task
    assert isinstance(outcome, Outcome), f"process() let the handler's {type(outcome).__name__} through"
    assert (outcome.kind, outcome.reason, outcome.error_type) == (OutcomeKind.RETRY, "error", error.__name__)
    assert outcome.error_message == "raised by the handler itself"


async def test_a_cancel_of_the_task_itself_still_leaves_process_as_a_cancel() -> None:
    # What a drain does: the delivery must go back unspent, so the cancel is not a failure.
    jobs = JobRegistry()
    started = asyncio.Event()

    @jobs.job("t.ping", model=_Ping)
    async def waits(payload: _Ping, ctx: JobContext) -> None:
        started.set()
        await asyncio.sleep(60)

    processor = Processor(registry=jobs, middlewares=[], payloads=PayloadResolver.for_store(None),
                          clock=SystemClock(), worker_id="w", max_message_bytes=1 << 20)
    task = asyncio.create_task(processor.process(await _one_delivery(jobs)))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
