"""``JobRegistry.job``: what no job could ever run is refused when the handler is registered,
not found later as every publish refused, or as jobs acked as succeeded whose handler never ran."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from pydantic import BaseModel

from conveyor.common.errors import ConfigurationError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.worker import Worker
from conveyor.producer.producer import Producer


class Ping(BaseModel):
    n: int


async def handler(payload: Ping, ctx: JobContext) -> None:
    return None


@pytest.mark.parametrize(("job_type", "options", "says"), [
    ("Send Email", {}, "job type 'Send Email': use 1 to 128 of a-z"),
    ("", {}, "job type '': use"),
    ("j" * 129, {}, "use 1 to 128"),
    ("t.ping", {"version": 0}, "version must be a whole number from 1 to 10000, not 0"),
    ("t.ping", {"version": -1}, "not -1"),
    ("t.ping", {"version": True}, "not True"),
    ("t.ping", {"version": 1.5}, "not 1.5"),
    ("t.ping", {"version": 10_001}, "not 10001"),
    ("t.ping", {"model": dict}, "the payload model must be a pydantic model class"),
    ("t.ping", {"model": Ping(n=1)}, "the payload model must be a pydantic model class"),
], ids=["capitals and a space", "empty", "too long", "version 0", "version -1", "version True", "version 1.5",
        "version past the envelope's limit", "a dict for a model", "a model instance"])
def test_a_job_no_envelope_could_carry_is_refused_at_registration(
    job_type: str, options: dict[str, Any], says: str
) -> None:
    # Registered, its every publish was refused as malformed (and a model that is not a class
    # failed each publish with an AttributeError).
    jobs = JobRegistry()
    with pytest.raises(ConfigurationError, match="^.*" + says.replace("(", r"\(")):
        jobs.job(job_type, **options)(handler)
    assert jobs.specs() == []


async def _yields(payload: Ping, ctx: JobContext) -> Any:
    yield None


def _yields_sync(payload: Ping, ctx: JobContext) -> Any:
    yield None


@pytest.mark.parametrize("generator", [_yields, _yields_sync], ids=["async generator", "generator"])
def test_a_generator_handler_is_refused_its_body_would_never_run(generator: Any) -> None:
    jobs = JobRegistry()
    with pytest.raises(ConfigurationError, match="the handler is a generator"):
        jobs.job("t.ping")(generator)


async def _payload_only(payload: Ping) -> None:
    pass


def _three_required(payload: Ping, ctx: JobContext, extra: int) -> None:
    pass


async def _keyword_required(payload: Ping, ctx: JobContext, *, retries: int) -> None:
    pass


@pytest.mark.parametrize("handler", [_payload_only, _three_required, _keyword_required],
                         ids=["payload only", "a third argument", "a required keyword"])
def test_a_handler_that_cannot_take_payload_and_ctx_is_refused_at_registration(handler: Any) -> None:
    # Every job calls handler(payload, ctx): it failed each attempt with a TypeError to the DLQ.
    jobs = JobRegistry()
    with pytest.raises(ConfigurationError, match=r"t.ping: the handler must take \(payload, ctx\)") as caught:
        jobs.job("t.ping", model=Ping)(handler)
    assert "\n" not in str(caught.value)
    assert jobs.specs() == []


def _defaults_and_extras(payload: Ping, ctx: JobContext | None = None, *rest: object, **options: object) -> None:
    pass


def test_a_handler_with_defaults_or_extras_after_payload_and_ctx_is_taken() -> None:
    jobs = JobRegistry()
    jobs.job("t.ping")(_defaults_and_extras)
    assert [spec.job_type for spec in jobs.specs()] == ["t.ping"]


class AsyncCallable:
    def __init__(self) -> None:
        self.ran: list[int] = []

    async def __call__(self, payload: Ping, ctx: JobContext) -> None:
        self.ran.append(payload.n)


async def test_an_object_with_an_async_call_runs_as_an_async_handler() -> None:
    # Taken for a sync handler, it ran in a thread, its coroutine was never awaited, and the
    # job was acked as succeeded.
    handle = AsyncCallable()
    jobs = JobRegistry()
    jobs.job("t.ping", model=Ping)(handle)
    jobs.job("t.partial", model=Ping)(functools.partial(handle))
    assert [spec.is_async for spec in jobs.specs()] == [True, True]
    broker = MemoryBroker()
    async with MemoryTransport(broker) as transport, Worker(transport, jobs) as worker:
        async with Producer.for_registry(MemoryTransport(broker), jobs) as producer:
            await producer.publish("t.ping", {"n": 1})
            await producer.publish("t.partial", {"n": 2})
        await broker.join(DEFAULT_QUEUE)
    assert sorted(handle.ran) == [1, 2] and worker.counts["succeeded"] == 2


@pytest.mark.parametrize("timeout", ["5", None, True, float("nan"), float("inf"), 0, -1])
def test_a_timeout_that_is_no_positive_number_is_refused_at_registration(timeout: object) -> None:
    """A string timeout was a bare TypeError from the comparison, not the one-line error."""
    jobs = JobRegistry()
    with pytest.raises(ConfigurationError, match="timeout must be a positive number"):
        jobs.job("t.timeout", model=Ping, timeout=timeout)(handler)  # type: ignore[arg-type]
