"""Input no copy could be written of, and bodies meant for another reader, on every backend.

A retry or deferral copy re-encodes the message. Whatever the worker accepts must therefore be
writable again, or settling fails and the message loops (issue 13, defect 14: 31,920
redeliveries in 35 s on memory; on RabbitMQ 20, then the broker's delivery limit, no record).
So it is refused at decode, ``malformed``, after one delivery; and should a copy fail anyway,
the original bytes are dead-lettered once (``settlement_failed``) instead.
"""

from __future__ import annotations

import asyncio
import itertools

import orjson
import pytest
from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.codec import DEFAULT_MAX_MESSAGE_BYTES, MAX_DEPTH, encode_envelope, encode_model
from conveyor.common.errors import RetryableError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.transport.base import OutgoingMessage
from conveyor.consumer.settlement import DeferPolicy
from conveyor.consumer.worker import Worker
from conveyor.producer.producer import Producer
from conveyor.schemas.envelope import Envelope, InlinePayload
from tests.conformance.test_job_lifecycle import Calls, Ping, dead_letters, fast_config, producer_for, registry_for
from tests.conftest import wait_until
from tests.support.backends import Backend


def always_failing(calls: Calls) -> object:
    async def handler(payload: Ping, ctx: JobContext) -> None:
        calls.add(ctx)
        raise RetryableError("fails every time: each delivery needs a retry copy")

    return handler


async def send(backend: Backend, body: bytes, headers: dict[str, str] | None = None) -> None:
    sender = await backend.transport()
    await sender.declare(backend.queue)
    await sender.publish(backend.queue, OutgoingMessage(body=body, message_id="hostile-1", headers=headers or {}))


def body_with(jobs: JobRegistry, extra: bytes, *, version: int | None = None) -> bytes:
    """A valid envelope whose data holds ``"x": <extra>`` (JSON text) beside its ``n``."""
    envelope = Producer.for_registry(None, jobs).build_envelope("test.ping", Ping(n=1))  # type: ignore[arg-type]
    body = encode_model(envelope)
    assert b'"data":{"n":1}' in body and b'"schema_version":1,' in body
    if version is not None:  # written by a newer producer than this registry knows
        body = body.replace(b'"schema_version":1,', b'"schema_version":%d,' % version)
    return body.replace(b'"data":{"n":1}', b'"data":{"n":1,"x":' + extra + b"}")


# The envelope, its payload and its data are three levels; ``x`` adds its own.
NESTED_TOO_DEEP = {
    "one level past the limit": b"[" * (MAX_DEPTH - 2) + b"1" + b"]" * (MAX_DEPTH - 2),
    "300 levels": b"[" * 300 + b"1" + b"]" * 300,
    "1000 levels": b"[" * 1000 + b"1" + b"]" * 1000,
    "a lone surrogate": b'"caf\\udc80"',
    "a lone surrogate as a key": b'{"\\ud800": 1}',
}


@pytest.mark.parametrize("extra", list(NESTED_TOO_DEEP.values()), ids=list(NESTED_TOO_DEEP))
async def test_input_no_copy_could_be_written_of_is_dead_lettered_as_malformed_after_one_delivery(
    backend: Backend, extra: bytes
) -> None:
    calls = Calls()
    jobs = registry_for(backend, always_failing(calls))
    body = body_with(jobs, extra)
    await send(backend, body)
    async with Worker(await backend.transport(), jobs, config=fast_config()) as worker:
        await wait_until(lambda: worker.counts["dead_lettered"] == 1, what="the message in the DLQ")
        await asyncio.sleep(0.3)
        assert (worker.counts["released"], worker.counts["retried"], worker.counts["dead_lettered"]) == (0, 0, 1)
    assert calls.seen == [], "the handler never sees it"
    [record] = await dead_letters(backend)
    assert record.reason == "malformed"
    assert record.original_body == body


async def test_data_nested_right_up_to_the_limit_runs_and_retries_normally(backend: Backend) -> None:
    calls = Calls()
    jobs = registry_for(backend, always_failing(calls), retry=RetryPolicy(max_attempts=2, base=0.2, jitter=0.0))
    await send(backend, body_with(jobs, b"[" * (MAX_DEPTH - 3) + b"1" + b"]" * (MAX_DEPTH - 3)))
    async with Worker(await backend.transport(), jobs, config=fast_config()) as worker:
        await wait_until(lambda: worker.counts["dead_lettered"] == 1, what="both attempts")
    assert [attempt for _, attempt, _ in calls.seen] == [1, 2]
    assert worker.counts["retried"] == 1
    [record] = await dead_letters(backend)
    assert record.reason == "exhausted"


@pytest.mark.parametrize("copy_kind", ["retry", "deferral"])
async def test_a_copy_that_cannot_be_encoded_is_dead_lettered_once_with_the_original_bytes(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, copy_kind: str
) -> None:
    # The decoder refuses what could not be written back; this stands for a copy that fails to
    # encode anyway (a bug): it must end in the DLQ, not in a redelivery loop.
    unencodable = InlinePayload.model_construct(kind="inline", data={"n": "\udc80"})
    for method in ("next_attempt", "with_history"):
        real = getattr(Envelope, method)
        monkeypatch.setattr(Envelope, method, lambda self, rec, real=real: real(self, rec).model_copy(
            update={"payload": unencodable}))
    calls = Calls()
    jobs = registry_for(backend, always_failing(calls))
    body = body_with(jobs, b"2", version=2 if copy_kind == "deferral" else None)
    await send(backend, body)
    config = fast_config(defer=DeferPolicy(delay=0.2, max_deferrals=5))
    async with Worker(await backend.transport(), jobs, config=config) as worker:
        await wait_until(lambda: worker.counts["dead_lettered"] == 1, what="the original in the DLQ")
        await asyncio.sleep(0.3)
        assert (worker.counts["released"], worker.counts["retried"], worker.counts["deferred"]) == (0, 0, 0)
    assert len(calls.seen) == (1 if copy_kind == "retry" else 0)
    [record] = await dead_letters(backend)
    assert record.reason == "settlement_failed"
    assert record.original_body == body, "the original bytes, not a re-encoding"
    assert record.error_type == "PydanticSerializationError"
    assert record.history[-1].error_type == ("RetryableError" if copy_kind == "retry" else "SchemaTooNew")


LABELS = {
    "a pickle": ({"content-type": "application/x-python-serialize"}, "unsupported_content_type"),
    "plain text": ({"content-type": "text/plain"}, "unsupported_content_type"),
    "JSON in Latin-1": ({"content-type": "application/json; charset=iso-8859-1"}, "unsupported_content_type"),
    "gzip": ({"content-encoding": "gzip"}, "unsupported_content_encoding"),
    "JSON, gzipped": ({"content-type": "application/json", "content-encoding": "gzip"}, "unsupported_content_encoding"),
    "capitalised": ({"Content-Type": "application/x-msgpack"}, "unsupported_content_type"),
}


@pytest.mark.parametrize(("labels", "reason"), list(LABELS.values()), ids=list(LABELS))
async def test_a_valid_envelope_labelled_as_another_content_is_dead_lettered_unrun(
    backend: Backend, labels: dict[str, str], reason: str
) -> None:
    calls = Calls()
    jobs = registry_for(backend, always_failing(calls))
    body = body_with(jobs, b"2")
    await send(backend, body, labels)
    async with Worker(await backend.transport(), jobs, config=fast_config()) as worker:
        await wait_until(lambda: worker.counts["dead_lettered"] == 1, what="the mislabelled message in the DLQ")
        await asyncio.sleep(0.3)
        assert worker.counts["released"] == 0
    assert calls.seen == []
    [record] = await dead_letters(backend)
    assert record.reason == reason
    assert record.original_body == body
    assert {k.lower(): v for k, v in labels.items()}.items() <= {
        k.lower(): v for k, v in record.original_headers.items()}.items(), "the record shows the label"


async def test_json_labelled_as_json_runs(backend: Backend) -> None:
    seen: list[int] = []

    async def handler(payload: Ping, ctx: JobContext) -> None:
        seen.append(payload.n)

    jobs = registry_for(backend, handler)
    await send(backend, body_with(jobs, b"2"), {"content-type": "application/json; charset=utf-8",
                                               "content-encoding": "identity"})
    async with Worker(await backend.transport(), jobs, config=fast_config()) as worker:
        await wait_until(lambda: worker.counts["succeeded"] == 1, what="the labelled job")
    assert seen == [1]


async def test_a_job_published_at_attempt_999_with_no_history_gets_its_full_retry_budget(backend: Backend) -> None:
    # The schema allows attempt up to 10,000 and a publisher in another language may send its own
    # counter: trusted, attempt=999 would be "exhausted" after one run (issue 13, defect 13).
    calls = Calls()
    jobs = registry_for(backend, always_failing(calls), retry=RetryPolicy(max_attempts=3, base=0.2, jitter=0.0))
    envelope = Producer.for_registry(None, jobs).build_envelope("test.ping", Ping(n=1))  # type: ignore[arg-type]
    body = encode_model(envelope.model_copy(update={"attempt": 999}))
    await send(backend, body)
    async with Worker(await backend.transport(), jobs, config=fast_config()) as worker:
        await wait_until(lambda: worker.counts["dead_lettered"] == 1, what="the job's three attempts")
    assert [attempt for _, attempt, _ in calls.seen] == [1, 2, 3]
    assert worker.counts["retried"] == 2
    [record] = await dead_letters(backend)
    assert (record.reason, record.attempt, [h.attempt for h in record.history]) == ("exhausted", 3, [1, 2, 3])


def foreign_bodies(jobs: JobRegistry) -> dict[str, tuple[bytes, str]]:
    """What another publisher may put on a work queue, and the reason each is dead-lettered with."""
    envelope = Producer.for_registry(None, jobs).build_envelope("test.ping", Ping(n=1))  # type: ignore[arg-type]
    sample = orjson.loads(encode_model(envelope))
    ids = itertools.count()

    def changed(**fields: object) -> bytes:
        return orjson.dumps({**sample, "job_id": f"foreign-{next(ids)}", **fields})

    return {
        "an empty body": (b"", "malformed"),
        "only spaces": (b"   ", "malformed"),
        "text, not JSON": (b"hello", "malformed"),
        "a JSON array": (b"[1, 2]", "malformed"),
        "JSON null": (b"null", "malformed"),
        "a JSON number": (b"42", "malformed"),
        "an empty object": (b"{}", "malformed"),
        "data that is a list": (changed(payload={"kind": "inline", "data": [1]}), "malformed"),
        "a payload without its kind": (changed(payload={"data": {"n": 1}}), "malformed"),
        "schema version 0": (changed(schema_version=0), "malformed"),
        "schema version as a string": (changed(schema_version="2"), "malformed"),
        "a version older than any upcaster": (changed(schema_version=1), "unknown_version"),
        "a payload of the wrong shape": (changed(payload={"kind": "inline", "data": {"n": "one"}}), "invalid_payload"),
    }


async def test_bodies_another_publisher_put_on_the_queue_are_each_dead_lettered_once_with_their_reason(
    backend: Backend,
) -> None:
    calls = Calls()
    jobs = JobRegistry()  # version 2 only: a v1 message has no upcaster

    async def handler(payload: Ping, ctx: JobContext) -> None:
        calls.add(ctx)

    jobs.job("test.ping", version=2, queue=backend.queue, timeout=10, model=Ping)(handler)
    bodies = foreign_bodies(jobs)
    sender = await backend.transport()
    await sender.declare(backend.queue)
    for marker, (body, _) in bodies.items():
        await sender.publish(backend.queue, OutgoingMessage(body=body, message_id=marker, headers={"x-marker": marker}))
    valid = await (await producer_for(backend, jobs)).publish("test.ping", Ping(n=7))
    async with Worker(await backend.transport(), jobs, config=fast_config()) as worker:
        await wait_until(lambda: worker.counts["dead_lettered"] == len(bodies) and worker.counts["succeeded"] == 1,
                         what="every foreign body in the DLQ and the valid job run", timeout=30)
        await asyncio.sleep(0.3)
        assert (worker.counts["released"], worker.counts["retried"], worker.counts["deferred"]) == (0, 0, 0)
    assert [job_id for job_id, _, _ in calls.seen] == [valid.job_id], "the handler saw the valid job only"
    reasons = {record.original_headers["x-marker"]: record.reason for record in await dead_letters(backend)}
    assert reasons == {marker: reason for marker, (_, reason) in bodies.items()}


async def test_a_job_sent_right_at_the_size_limit_keeps_its_retries(backend: Backend) -> None:
    # Each retry copy carries one more attempt record: counted against the limit, the first
    # copy came back "oversize", dead-lettered with its retries unspent, and unreplayable.
    runs: list[int] = []
    jobs = JobRegistry()

    @jobs.job("test.blob", queue=backend.queue, retry=RetryPolicy(max_attempts=3, base=0.2, jitter=0.0), timeout=10)
    async def fails_twice(payload: Blob, ctx: JobContext) -> None:
        runs.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RetryableError("x" * 1000)  # the longest error message a record keeps

    producer = await producer_for(backend, jobs)
    empty = len(encode_envelope(producer.build_envelope("test.blob", Blob(text=""))))
    receipt = await producer.publish("test.blob", Blob(text="t" * (DEFAULT_MAX_MESSAGE_BYTES - empty)))
    async with Worker(await backend.transport(), jobs, config=fast_config()) as worker:
        await wait_until(lambda: worker.counts["succeeded"] == 1, timeout=30, what="the third attempt")
    assert runs == [1, 2, 3] and worker.counts["dead_lettered"] == 0, receipt.job_id


class Blob(BaseModel):
    text: str
