"""Claim checks end to end on the in-memory broker and store: publish, fetch, verify, clean up."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import re
from collections.abc import Callable

import orjson
import pytest
from pydantic import BaseModel, ConfigDict

from conveyor.common.backoff import RetryPolicy
from conveyor.common.codec import decode_envelope, encode_model
from conveyor.common.errors import MalformedMessage, MessageTooLarge, PublishNotConfirmed
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.payload_store.memory import MemoryPayloadStore
from conveyor.common.transport.base import OutgoingMessage
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.breaker import BreakerConfig, BreakerState
from conveyor.consumer.ops.dead_letters import DeadLetterFilter, DeadLetters
from conveyor.consumer.payloads import PayloadResolver
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer
from conveyor.schemas.envelope import InlinePayload, PayloadReference

THRESHOLD = 1024


class Blob(BaseModel):
    text: str


class Harness:
    def __init__(self, *, retry: RetryPolicy | None = None, breaker: BreakerConfig | None = None) -> None:
        self.broker = MemoryBroker()
        self.store = MemoryPayloadStore()
        self.seen: list[str] = []
        self.jobs = JobRegistry()
        self.fail = False

        @self.jobs.job("t.blob", retry=retry or RetryPolicy(max_attempts=3, base=0.01, jitter=0), breaker="blobs")
        async def handle(payload: Blob, ctx: JobContext) -> None:
            self.seen.append(payload.text)
            if self.fail:
                from conveyor.common.errors import PermanentError

                raise PermanentError("no")

        self.config = WorkerConfig(concurrency=2, breaker=breaker or BreakerConfig())

    def producer(self, **kwargs: object) -> Producer:
        options = {"payload_store": self.store, "payload_threshold": THRESHOLD, **kwargs}
        return Producer.for_registry(MemoryTransport(self.broker), self.jobs, **options)  # type: ignore[arg-type]

    async def worker(self) -> Worker:
        transport = MemoryTransport(self.broker)
        await transport.connect()
        return Worker(transport, self.jobs, config=self.config, payload_store=self.store)

    async def raw(self, body: bytes) -> None:
        transport = MemoryTransport(self.broker)
        await transport.connect()
        await transport.declare(DEFAULT_QUEUE)
        await transport.publish(DEFAULT_QUEUE, OutgoingMessage(body=body, message_id="raw"))

    async def dead_letters(self) -> list:
        transport = MemoryTransport(self.broker)
        await transport.connect()
        return await DeadLetters(transport, DEFAULT_QUEUE).list()


async def until(predicate: Callable[[], bool]) -> None:
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


async def published_envelope(h: Harness):  # type: ignore[no-untyped-def]
    reader = MemoryTransport(h.broker)
    await reader.connect()
    delivery = await reader.get(DEFAULT_QUEUE)
    assert delivery is not None
    await delivery.release()
    return decode_envelope(delivery.body)


async def test_small_payloads_stay_inline_and_touch_no_store() -> None:
    h = Harness()
    async with h.producer() as producer:
        await producer.publish("t.blob", Blob(text="small"))
    envelope = await published_envelope(h)
    assert isinstance(envelope.payload, InlinePayload)
    assert h.store.requests == []


async def test_a_large_payload_travels_as_a_structured_reference_and_comes_back_whole() -> None:
    h = Harness()
    text = "é" * 5000
    async with h.producer() as producer:
        receipt = await producer.publish("t.blob", Blob(text=text))
    envelope = await published_envelope(h)
    reference = envelope.payload
    assert isinstance(reference, PayloadReference)
    stored = h.store.objects[reference.key].data
    assert stored == orjson.dumps({"text": text})
    assert (reference.store, reference.bucket, reference.size) == ("memory", "conveyor", len(stored))
    assert reference.sha256 == hashlib.sha256(stored).hexdigest()
    assert reference.content_type == "application/json"
    assert re.fullmatch(rf"payloads/t\.blob/\d{{4}}/\d{{2}}/\d{{2}}/{receipt.job_id}-[0-9a-f]{{32}}\.json", reference.key)
    assert "://" not in encode_model(envelope).decode()  # a claim check, never a URL
    async with await h.worker() as worker:
        await until(lambda: worker.counts["succeeded"] == 1)
    assert h.seen == [text]
    assert h.store.objects == {}, "a succeeded job's object is deleted after the ack"


@pytest.mark.parametrize(("over", "kind"), [(-1, "inline"), (0, "inline"), (1, "ref")])
async def test_the_threshold_is_the_largest_encoded_payload_that_stays_inline(over: int, kind: str) -> None:
    h = Harness()
    room = THRESHOLD + over - len(b'{"text":""}')
    text = "é" * (room // 2) + "x" * (room % 2)  # é is two bytes of UTF-8
    assert len(orjson.dumps({"text": text})) == THRESHOLD + over
    async with h.producer() as producer:
        await producer.publish("t.blob", Blob(text=text))
    assert (await published_envelope(h)).payload.kind == kind
    async with await h.worker() as worker:
        await until(lambda: worker.counts["succeeded"] == 1)
    assert h.seen == [text]


async def test_a_tampered_object_goes_to_the_dlq_after_one_delivery_and_the_handler_never_runs() -> None:
    h = Harness()
    async with h.producer() as producer:
        await producer.publish("t.blob", Blob(text="a" * 2000))
    key = next(iter(h.store.objects))
    h.store.tamper(key, b'{"text": "' + b"b" * 2000 + b'"}')
    async with await h.worker() as worker:
        await until(lambda: worker.counts["dead_lettered"] == 1)
    [record] = await h.dead_letters()
    assert record.reason == "payload_integrity"
    assert h.seen == [] and worker.counts["retried"] == 0
    assert key in h.store.objects, "a dead-lettered job keeps its object"


async def test_a_missing_object_goes_to_the_dlq_as_payload_missing() -> None:
    h = Harness()
    async with h.producer() as producer:
        await producer.publish("t.blob", Blob(text="a" * 2000))
    h.store.objects.clear()
    async with await h.worker() as worker:
        await until(lambda: worker.counts["dead_lettered"] == 1)
    [record] = await h.dead_letters()
    assert record.reason == "payload_missing"


async def test_an_escaping_reference_is_dead_lettered_without_any_store_request() -> None:
    h = Harness()
    async with h.producer(payload_store=None) as producer:
        envelope = producer.build_envelope("t.blob", Blob(text="x"))
    hostile = PayloadReference(store="memory", bucket="conveyor", key="payloads/../../etc/passwd", sha256="0" * 64, size=4)
    await h.raw(encode_model(envelope.model_copy(update={"payload": hostile})))
    async with await h.worker() as worker:
        await until(lambda: worker.counts["dead_lettered"] == 1)
    [record] = await h.dead_letters()
    assert record.reason == "payload_reference_invalid"
    assert h.store.requests == []


async def test_a_store_outage_is_retried_and_opens_the_jobs_breaker_without_fetching_more() -> None:
    h = Harness(retry=RetryPolicy(max_attempts=10, base=5, jitter=0),
                breaker=BreakerConfig(consecutive_failures=2, reset_timeout=60))
    h.config = WorkerConfig(concurrency=1, breaker=h.config.breaker)
    async with h.producer() as producer:
        for i in range(4):
            await producer.publish("t.blob", Blob(text=str(i) * 2000))
    h.store.fail_with = ConnectionError("store down")
    fetches_before = len(h.store.requests)
    async with await h.worker() as worker:
        await until(lambda: worker.breakers.get("blobs").state is BreakerState.OPEN)
        await asyncio.sleep(0.05)
        assert worker.counts["retried"] == 2 and worker.counts["dead_lettered"] == 0
        assert len(h.store.requests) - fetches_before == 2, "an open breaker stops fetching"
    assert h.seen == []


async def test_an_open_breaker_releases_a_reference_job_unfetched() -> None:
    h = Harness()
    async with h.producer() as producer:
        await producer.publish("t.blob", Blob(text="z" * 2000))
    worker = await h.worker()
    breaker = worker.breakers.get("blobs")
    for _ in range(5):
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    fetches = len(h.store.requests)
    reader = MemoryTransport(h.broker)
    await reader.connect()
    delivery = await reader.get(DEFAULT_QUEUE)
    assert delivery is not None
    outcome = await worker.processor.process(delivery)
    assert outcome.kind.name == "RELEASE" and outcome.reason == "circuit_open"
    assert len(h.store.requests) == fetches
    await delivery.release()


async def test_a_failed_delete_after_success_is_logged_and_the_job_still_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    async with h.producer() as producer:
        await producer.publish("t.blob", Blob(text="q" * 2000))
    worker = await h.worker()
    original_delete = h.store.delete

    async def broken_delete(reference: PayloadReference) -> None:
        raise ConnectionError("delete failed")

    h.store.delete = broken_delete  # type: ignore[method-assign]
    async with worker:
        await until(lambda: worker.counts["succeeded"] == 1)
    assert "payload delete failed" in caplog.text
    assert len(h.store.objects) == 1  # left for the sweep or a lifecycle rule
    h.store.delete = original_delete  # type: ignore[method-assign]


async def test_dlq_purge_deletes_the_objects_of_purged_entries_only() -> None:
    h = Harness()
    h.fail = True
    async with h.producer() as producer:
        await producer.publish("t.blob", Blob(text="1" * 2000))
        await producer.publish("t.blob", Blob(text="2" * 2000))
    async with await h.worker() as worker:
        await until(lambda: worker.counts["dead_lettered"] == 2)
    assert len(h.store.objects) == 2, "dead-lettered jobs keep their objects"
    transport = MemoryTransport(h.broker)
    await transport.connect()
    letters = DeadLetters(transport, DEFAULT_QUEUE, payloads=PayloadResolver([h.store]))
    [first, _] = await letters.list()
    assert await letters.purge(DeadLetterFilter(dead_letter_id=first.dead_letter_id)) == 1
    assert letters.payloads_deleted == 1 and len(h.store.objects) == 1


async def test_a_refused_publish_deletes_its_uploaded_object() -> None:
    h = Harness()
    async with h.producer(declare_queues=False) as producer:
        with pytest.raises(PublishNotConfirmed):
            await producer.publish("t.blob", Blob(text="r" * 2000))
    assert h.store.objects == {}


async def test_an_unknown_publish_outcome_is_retried_with_the_same_reference() -> None:
    h = Harness()

    class LostConfirm(MemoryTransport):
        bodies: list[bytes] = []

        async def publish(self, queue: str, message: OutgoingMessage) -> None:
            self.bodies.append(message.body)
            await super().publish(queue, message)
            if len(self.bodies) == 1:
                await asyncio.sleep(10)

    transport = LostConfirm(h.broker)
    producer = Producer.for_registry(transport, h.jobs, payload_store=h.store, payload_threshold=THRESHOLD,
                                     confirm_timeout=0.05)
    async with producer:
        receipt = await producer.publish("t.blob", Blob(text="u" * 2000))
    assert receipt.tries == 2
    assert len(h.store.objects) == 1 and [op for op, _ in h.store.requests] == ["put"]
    first, second = (decode_envelope(b).payload for b in transport.bodies)
    assert first == second


async def test_a_payload_over_the_store_limit_is_refused_before_upload() -> None:
    h = Harness()
    h.store.max_bytes = 4096
    async with h.producer() as producer:
        with pytest.raises(MessageTooLarge):
            await producer.publish("t.blob", Blob(text="o" * 5000))
    assert h.store.requests == []


@pytest.mark.parametrize("size", [10, 2000], ids=["small, inline", "large, a claim check"])
async def test_data_the_inline_path_writes_the_claim_check_writes_too(size: int) -> None:
    # With a store, every publish went through orjson first, which has no encoding for bytes or
    # a set: a bare TypeError, even for a small payload that never needed the store.
    h = Harness()
    jobs = JobRegistry()
    seen: list[dict[str, object]] = []

    @jobs.job("t.loose", queue=DEFAULT_QUEUE)
    async def handle(payload: Loose, ctx: JobContext) -> None:
        seen.append(payload.model_dump())

    h.jobs = jobs
    async with h.producer() as producer:
        await producer.publish("t.loose", {"raw": b"bytes", "tags": {"only"}, "text": "t" * size})
    envelope = await published_envelope(h)
    assert isinstance(envelope.payload, PayloadReference if size > THRESHOLD else InlinePayload)
    async with await h.worker() as worker:
        await until(lambda: worker.counts["succeeded"] == 1)
    assert seen == [{"raw": "bytes", "tags": ["only"], "text": "t" * size}], "the same data either way"


async def test_data_no_encoder_can_write_is_a_typed_error_and_uploads_nothing() -> None:
    h = Harness()
    h.jobs = JobRegistry()
    h.jobs.job("t.loose", queue=DEFAULT_QUEUE)(_loose_handler)
    async with h.producer() as producer:
        for data in ({"raw": object(), "text": "t" * 2000}, {"raw": b"\xff not UTF-8", "text": "t" * 2000}):
            with pytest.raises(MalformedMessage, match="cannot be encoded as JSON"):
                await producer.publish("t.loose", data)
    assert h.store.requests == []


class Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


async def _loose_handler(payload: Loose, ctx: JobContext) -> None:
    return None


async def test_a_newer_version_is_deferred_without_fetching_its_payload() -> None:
    h = Harness()
    async with h.producer() as producer:
        envelope = producer.build_envelope("t.blob", Blob(text="n" * 2000))
        offloaded = await producer.claim_check.offload(envelope)  # type: ignore[union-attr]
    await h.raw(encode_model(offloaded.model_copy(update={"schema_version": 2})))
    fetches = len(h.store.requests)
    async with await h.worker() as worker:
        await until(lambda: worker.counts["deferred"] == 1)
    assert len(h.store.requests) == fetches
    assert len(h.store.objects) == 1


async def test_a_redelivered_claim_check_job_that_already_succeeded_is_acked_without_a_fetch() -> None:
    """The ack of a succeeded job was lost; its object is deleted; the redelivery must not be
    dead-lettered as payload_missing (that job succeeded): the processed key says so first."""
    from conveyor.common.idempotency.memory import MemoryProcessedKeyStore

    h = Harness()
    keys = MemoryProcessedKeyStore()
    async with h.producer() as producer:
        await producer.publish("t.blob", Blob(text="c" * 2000))
    original = await published_envelope(h)
    transport = MemoryTransport(h.broker)
    await transport.connect()
    async with Worker(transport, h.jobs, config=h.config, payload_store=h.store, idempotency=keys) as worker:
        await until(lambda: worker.counts["succeeded"] == 1)
        assert h.store.objects == {}
        requests = len(h.store.requests)
        await h.raw(encode_model(original))  # the broker redelivers the same message
        await until(lambda: worker.counts["succeeded"] == 2)
    assert h.seen == ["c" * 2000], "the handler ran once"
    assert await h.dead_letters() == []
    assert all(op != "get" for op, *_ in h.store.requests[requests:]), "no fetch for the redelivery"


async def test_a_failed_fetch_is_a_failed_attempt_warning_with_the_jobs_fields() -> None:
    # The fetch runs before the middlewares: a store outage (or wrong S3 credentials) spent
    # every job's attempts without a line until its dead letter.
    from conveyor.common.logging import JsonFormatter

    h = Harness()
    async with h.producer() as producer:
        receipt = await producer.publish("t.blob", Blob(text="f" * 2000))
    h.store.fail_with = ConnectionError("store down")
    worker = await h.worker()
    reader = MemoryTransport(h.broker)
    await reader.connect()
    delivery = await reader.get(DEFAULT_QUEUE)
    assert delivery is not None
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.setFormatter(JsonFormatter())  # formatted as it is emitted: the job's fields are set then
    jobs_log = logging.getLogger("conveyor.jobs")
    jobs_log.addHandler(handler)
    try:
        outcome = await worker.processor.process(delivery)
    finally:
        jobs_log.removeHandler(handler)
    assert outcome.kind.name == "RETRY"
    [line] = [orjson.loads(text) for text in written.getvalue().splitlines()]
    assert (line["level"], line["msg"], line["error_type"]) == ("warning", "job attempt failed", "PayloadStoreUnavailable")
    assert (line["job_id"], line["job_type"], line["attempt"]) == (receipt.job_id, "t.blob", 1)
    await delivery.release()
