"""Claim checks (on the REAL S3-compatible store) and schema evolution, on every backend."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.codec import encode_model
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.payload_store.s3 import S3PayloadStore
from conveyor.common.transport.base import OutgoingMessage
from conveyor.consumer.settlement import DeferPolicy
from conveyor.consumer.worker import Worker
from conveyor.producer.producer import Producer
from conveyor.schemas.envelope import PayloadReference
from tests.conformance.test_job_lifecycle import dead_letters, fast_config
from tests.conftest import wait_until
from tests.support.backends import Backend
from tests.support.s3 import make_s3_store, remove_prefix

FIVE_MIB = 5 * 1024 * 1024


class Blob(BaseModel):
    text: str


class Ping(BaseModel):
    n: int


class PingV2(BaseModel):
    n: int
    label: str


@pytest.fixture
async def s3() -> AsyncIterator[S3PayloadStore]:
    store = await make_s3_store()
    try:
        yield store
    finally:
        await remove_prefix(store)


def blob_jobs(backend: Backend, seen: list[str]) -> JobRegistry:
    jobs = JobRegistry()

    @jobs.job("test.blob", queue=backend.queue, retry=RetryPolicy(max_attempts=3, base=0.2, jitter=0.0), timeout=30)
    async def handle(payload: Blob, ctx: JobContext) -> None:
        seen.append(payload.text)

    return jobs


async def stored_keys(store: S3PayloadStore) -> list[str]:
    return [item.key async for item in store.list_objects()]


async def test_a_5_mib_payload_round_trips_through_a_reference(backend: Backend, s3: S3PayloadStore) -> None:
    seen: list[str] = []
    jobs = blob_jobs(backend, seen)
    text = "0123456789abcdef" * (FIVE_MIB // 16)
    producer = Producer.for_registry(await backend.transport(), jobs, manage_transport=False, payload_store=s3)
    await producer.publish("test.blob", Blob(text=text))
    [key] = await stored_keys(s3)
    assert key.startswith(f"{s3.prefix}/test.blob/")
    async with Worker(await backend.transport(), jobs, config=fast_config(), payload_store=s3) as worker:
        await wait_until(lambda: worker.counts["succeeded"] == 1, timeout=30, what="the 5 MiB job")
    assert seen == [text]
    assert await stored_keys(s3) == [], "the object of a succeeded job is deleted after the ack"


async def test_a_tampered_object_is_dead_lettered_after_one_delivery(backend: Backend, s3: S3PayloadStore) -> None:
    seen: list[str] = []
    jobs = blob_jobs(backend, seen)
    producer = Producer.for_registry(await backend.transport(), jobs, manage_transport=False, payload_store=s3,
                                     payload_threshold=1024)
    receipt = await producer.publish("test.blob", Blob(text="a" * 4096))
    [key] = await stored_keys(s3)
    forged = b'{"text":"' + b"b" * 4096 + b'"}'
    await s3.put(key, forged, size=len(forged))  # same size, other bytes
    async with Worker(await backend.transport(), jobs, config=fast_config(), payload_store=s3) as worker:
        await wait_until(lambda: worker.counts["dead_lettered"] == 1, what="the tampered job in the DLQ")
        await asyncio.sleep(0.3)
        assert worker.counts["retried"] == 0 and worker.counts["released"] == 0
    [record] = await dead_letters(backend)
    assert (record.reason, record.job_id) == ("payload_integrity", receipt.job_id)
    assert seen == []
    assert await stored_keys(s3) == [key], "a dead-lettered job keeps its object until purged"


@pytest.mark.parametrize(
    "escape",
    [
        {"bucket": "another-bucket"},
        {"key": "PREFIX/../../another-tenant/secret.json"},
        {"key": "/etc/passwd"},
        {"bucket": "user@evil.example"},
    ],
    ids=["other bucket", "dotdot", "absolute key", "userinfo bucket"],
)
async def test_a_reference_escaping_the_bucket_is_dead_lettered_without_a_request(
    backend: Backend, s3: S3PayloadStore, escape: dict[str, str]
) -> None:
    seen: list[str] = []
    jobs = blob_jobs(backend, seen)
    producer = Producer.for_registry(await backend.transport(), jobs, manage_transport=False)
    envelope = producer.build_envelope("test.blob", Blob(text="x"))
    fields = {"store": "s3", "bucket": s3.bucket, "key": f"{s3.prefix}/x.json", "sha256": "0" * 64, "size": 10}
    fields.update({k: v.replace("PREFIX", s3.prefix) for k, v in escape.items()})
    hostile = envelope.model_copy(update={"payload": PayloadReference(**fields)})  # type: ignore[arg-type]
    sender = await backend.transport()
    await sender.declare(backend.queue)
    await sender.publish(backend.queue, OutgoingMessage(body=encode_model(hostile), message_id=hostile.job_id))
    requests_before = s3.requests
    async with Worker(await backend.transport(), jobs, config=fast_config(), payload_store=s3) as worker:
        await wait_until(lambda: worker.counts["dead_lettered"] == 1, what="the hostile reference in the DLQ")
    assert s3.requests == requests_before, "no request may be made for an escaping reference"
    [record] = await dead_letters(backend)
    assert record.reason == "payload_reference_invalid"
    assert seen == []


async def test_references_to_a_missing_a_corrupted_or_an_oversized_object_are_each_dead_lettered_once(
    backend: Backend, s3: S3PayloadStore
) -> None:
    seen: list[str] = []
    jobs = blob_jobs(backend, seen)
    producer = Producer.for_registry(await backend.transport(), jobs, manage_transport=False)
    stored = b'{"text":"' + b"s" * 4096 + b'"}'
    real = await s3.put_payload("test.blob", "real", stored, producer.build_envelope("test.blob", Blob(text="")).created_at)
    wrong = {
        "missing": ({"key": real.key.replace(".json", "-gone.json")}, "payload_missing"),
        "corrupted": ({"sha256": "0" * 64}, "payload_integrity"),
        "longer than it says": ({"size": real.size // 2}, "payload_integrity"),
        "shorter than it says": ({"size": real.size * 2}, "payload_integrity"),
        "over the store's limit": ({"size": s3.max_bytes + 1}, "payload_reference_invalid"),
    }
    sender = await backend.transport()
    await sender.declare(backend.queue)
    for marker, (change, _) in wrong.items():
        envelope = producer.build_envelope("test.blob", Blob(text=""))
        hostile = envelope.model_copy(update={"payload": real.model_copy(update=change)})
        await sender.publish(backend.queue, OutgoingMessage(body=encode_model(hostile), message_id=hostile.job_id,
                                                            headers={"x-marker": marker}))
    async with Worker(await backend.transport(), jobs, config=fast_config(), payload_store=s3) as worker:
        await wait_until(lambda: worker.counts["dead_lettered"] == len(wrong), what="every bad reference in the DLQ")
        await asyncio.sleep(0.3)
        assert (worker.counts["retried"], worker.counts["released"], worker.counts["succeeded"]) == (0, 0, 0)
    reasons = {record.original_headers["x-marker"]: record.reason for record in await dead_letters(backend)}
    assert reasons == {marker: reason for marker, (_, reason) in wrong.items()}
    assert seen == []
    assert await stored_keys(s3) == [real.key], "a dead-lettered reference deletes nothing"


def ping_v1_jobs(backend: Backend, seen: list[tuple[str, int, str]]) -> JobRegistry:
    jobs = JobRegistry()

    @jobs.job("test.ping", queue=backend.queue, version=1, model=Ping, timeout=10)
    async def v1(payload: Ping, ctx: JobContext) -> None:
        seen.append((ctx.job_id, 1, ""))

    return jobs


def ping_v2_jobs(backend: Backend, seen: list[tuple[str, int, str]]) -> JobRegistry:
    jobs = JobRegistry()

    @jobs.job("test.ping", queue=backend.queue, version=2, model=PingV2, timeout=10)
    async def v2(payload: PingV2, ctx: JobContext) -> None:
        seen.append((ctx.job_id, 2, payload.label))

    jobs.schemas.register("test.ping", 1, Ping)
    jobs.schemas.upcaster("test.ping", 1)(lambda data: {**data, "label": f"upcast-{data['n']}"})
    return jobs


async def test_a_v1_message_is_upcast_for_a_v2_worker(backend: Backend) -> None:
    seen: list[tuple[str, int, str]] = []
    old_producer = Producer.for_registry(await backend.transport(), ping_v1_jobs(backend, []), manage_transport=False)
    receipt = await old_producer.publish("test.ping", Ping(n=7))
    async with Worker(await backend.transport(), ping_v2_jobs(backend, seen), config=fast_config()) as worker:
        await wait_until(lambda: worker.counts["succeeded"] == 1, what="the upcast job")
    assert seen == [(receipt.job_id, 2, "upcast-7")]
    assert await dead_letters(backend) == []


async def test_a_rolling_deploy_loses_nothing_and_dead_letters_nothing(backend: Backend) -> None:
    seen: list[tuple[str, int, str]] = []
    old_jobs, new_jobs = ping_v1_jobs(backend, seen), ping_v2_jobs(backend, seen)
    old_producer = Producer.for_registry(await backend.transport(), old_jobs, manage_transport=False)
    new_producer = Producer.for_registry(await backend.transport(), new_jobs, manage_transport=False)
    config = fast_config(defer=DeferPolicy(delay=0.2, max_deferrals=45))
    published: dict[str, int] = {}
    for i in range(10):  # in flight when the deploy starts: both versions, mixed
        published[(await new_producer.publish("test.ping", PingV2(n=i, label=f"new-{i}"))).job_id] = 2
        published[(await old_producer.publish("test.ping", Ping(n=i))).job_id] = 1
    async with (
        Worker(await backend.transport(), old_jobs, config=config) as old_worker,
        Worker(await backend.transport(), new_jobs, config=config) as new_worker,
    ):
        for i in range(10, 16):  # and both versions keep publishing during it
            published[(await new_producer.publish("test.ping", PingV2(n=i, label=f"new-{i}"))).job_id] = 2
            published[(await old_producer.publish("test.ping", Ping(n=i))).job_id] = 1
        done = lambda: old_worker.counts["succeeded"] + new_worker.counts["succeeded"] == len(published)  # noqa: E731
        await wait_until(done, timeout=30, what="every job of both versions")
        await asyncio.sleep(0.3)
    runs = collections.Counter(job_id for job_id, _, _ in seen)
    assert runs == collections.Counter(list(published)), "each job ran exactly once"
    for job_id, handled_by, _ in seen:
        assert handled_by >= published[job_id], "a v2 message never reaches the v1 handler"
    assert old_worker.counts["dead_lettered"] == new_worker.counts["dead_lettered"] == 0
    assert await dead_letters(backend) == []
    assert new_worker.counts["deferred"] == 0
    assert old_worker.counts["deferred"] >= 1, "the old worker met (and deferred) messages of the new version"


async def test_a_deferred_v2_message_keeps_its_reference_for_the_v2_worker(backend: Backend, s3: S3PayloadStore) -> None:
    seen: list[tuple[str, int, str]] = []
    new_jobs = ping_v2_jobs(backend, seen)
    producer = Producer.for_registry(await backend.transport(), new_jobs, manage_transport=False, payload_store=s3,
                                     payload_threshold=1024)
    receipt = await producer.publish("test.ping", PingV2(n=1, label="L" * 4096))
    config = fast_config(defer=DeferPolicy(delay=0.2, max_deferrals=45))
    requests = s3.requests
    async with Worker(await backend.transport(), ping_v1_jobs(backend, seen), config=config, payload_store=s3) as old:
        await wait_until(lambda: old.counts["deferred"] >= 1, what="the v1 worker to defer")
    assert s3.requests == requests, "a worker too old for the message does not fetch its payload"
    async with Worker(await backend.transport(), new_jobs, config=config, payload_store=s3) as new:
        await wait_until(lambda: new.counts["succeeded"] == 1, what="the v2 worker to run it")
    assert seen == [(receipt.job_id, 2, "L" * 4096)]
    assert await stored_keys(s3) == []


async def test_a_newer_version_no_worker_takes_is_dead_lettered_after_its_deferrals(backend: Backend) -> None:
    """Deferred, not failed, while a newer worker may come; after ``max_deferrals`` it is
    dead-lettered as ``unknown_version`` (to be replayed once the new workers run), never
    deferred forever, and its handler never ran."""
    from tests.conformance.test_hostile_input import always_failing, body_with, send
    from tests.conformance.test_job_lifecycle import Calls, registry_for

    calls = Calls()
    jobs = registry_for(backend, always_failing(calls))
    await send(backend, body_with(jobs, b"1", version=2))
    config = fast_config(defer=DeferPolicy(delay=0.2, max_deferrals=3))
    async with Worker(await backend.transport(), jobs, config=config) as worker:
        await wait_until(lambda: worker.counts["dead_lettered"] == 1, what="the newer message in the DLQ")
        assert worker.counts["deferred"] == 3
    assert calls.seen == []
    [record] = await dead_letters(backend)
    assert record.reason == "unknown_version"
