"""PayloadResolver: references are checked before any request, bytes are verified as read."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from unittest import mock

import orjson
import pytest

from conveyor.common.errors import (
    MalformedMessage,
    PayloadIntegrityError,
    PayloadMissing,
    PayloadReferenceInvalid,
    PayloadStoreUnavailable,
)
from conveyor.common.payload_store.memory import MemoryPayloadStore
from conveyor.consumer.payloads import PayloadResolver
from conveyor.schemas.envelope import InlinePayload, PayloadReference

WHEN = datetime(2026, 1, 2, tzinfo=UTC)
GOOD_KEY = "payloads/t.job/2026/01/02/job-1-0123456789abcdef0123456789abcdef.json"


def ref(**changes: object) -> PayloadReference:
    base = {"store": "memory", "bucket": "conveyor", "key": GOOD_KEY, "sha256": "a" * 64, "size": 10}
    return PayloadReference(**{**base, **changes})  # type: ignore[arg-type]


ESCAPES = {
    "other bucket": ref(bucket="someone-elses"),
    "dotdot in key": ref(key="payloads/../secrets/x.json"),
    "dotdot at the end": ref(key="payloads/t.job/.."),
    "leading slash": ref(key="/payloads/t.job/x.json"),
    "backslash": ref(key="payloads\\..\\x.json"),
    "NUL": ref(key="payloads/t.job/x.json\x00.png"),
    "userinfo at in bucket": ref(bucket="user@conveyor"),
    "port colon in bucket": ref(bucket="conveyor:9000"),
    "slash in bucket": ref(bucket="conveyor/x"),
    "dotdot in bucket": ref(bucket="con..veyor"),
    "outside the prefix": ref(key="elsewhere/t.job/x.json"),
    "prefix lookalike": ref(key="payloads-evil/x.json"),
    "empty segment": ref(key="payloads//x.json"),
    "percent encoding": ref(key="payloads/%2e%2e/x.json"),
    "unknown store": ref(store="ftp"),
    "over the size cap": ref(size=10**9),
}


@pytest.mark.parametrize("reference", ESCAPES.values(), ids=ESCAPES.keys())
async def test_an_escaping_reference_is_rejected_before_any_request(reference: PayloadReference) -> None:
    store = MemoryPayloadStore(max_bytes=1024 * 1024)
    spy = mock.AsyncMock(wraps=store)  # a double that records any call made on the store
    spy.name = store.name
    spy.validate = store.validate
    resolver = PayloadResolver({"memory": spy})
    with pytest.raises(PayloadReferenceInvalid) as caught:
        await resolver.load(reference)
    assert caught.value.reason == "payload_reference_invalid"
    assert store.requests == []
    assert spy.get.call_count == 0 and spy.delete.call_count == 0
    assert reference.key not in str(caught.value)  # never echo message values


async def test_inline_payloads_need_no_store() -> None:
    assert await PayloadResolver().load(InlinePayload(data={"a": 1})) == {"a": 1}


async def stored(data: bytes, **store_options: object) -> tuple[MemoryPayloadStore, PayloadReference]:
    store = MemoryPayloadStore(**store_options)  # type: ignore[arg-type]
    reference = await store.put_payload("t.job", "job-1", data, WHEN)
    return store, reference


async def test_a_verified_payload_is_parsed_from_the_same_bytes() -> None:
    data = orjson.dumps({"blob": "x" * 5000})
    store, reference = await stored(data, chunk_size=512)
    assert await PayloadResolver([store]).load(reference) == {"blob": "x" * 5000}


@pytest.mark.parametrize("tampered", [b'{"blob": "y"}', b'{"blob": "xx"}', b'{"b": 1}'], ids=["same size", "longer", "shorter"])
async def test_a_tampered_object_is_an_integrity_error(tampered: bytes) -> None:
    store, reference = await stored(b'{"blob": "x"}')
    store.tamper(reference.key, tampered)
    with pytest.raises(PayloadIntegrityError) as caught:
        await PayloadResolver([store]).load(reference)
    assert caught.value.reason == "payload_integrity"


async def test_a_reference_with_a_wrong_sha_is_an_integrity_error() -> None:
    store, reference = await stored(b'{"a": 1}')
    wrong = reference.model_copy(update={"sha256": hashlib.sha256(b"other").hexdigest()})
    with pytest.raises(PayloadIntegrityError):
        await PayloadResolver([store]).load(wrong)


async def test_an_object_that_is_not_a_json_object_is_malformed() -> None:
    store, reference = await stored(b"[1, 2]")
    with pytest.raises(MalformedMessage):
        await PayloadResolver([store]).load(reference)


async def test_a_missing_object_is_payload_missing() -> None:
    store, reference = await stored(b"{}")
    await store.delete(reference)
    with pytest.raises(PayloadMissing) as caught:
        await PayloadResolver([store]).load(reference)
    assert caught.value.reason == "payload_missing"


async def test_a_store_outage_is_retryable_not_a_rejection() -> None:
    store, reference = await stored(b"{}")
    store.fail_with = ConnectionError("down")
    with pytest.raises(PayloadStoreUnavailable):
        await PayloadResolver([store]).load(reference)


async def test_a_stalled_download_is_cut_off_by_the_store_timeout() -> None:
    store, reference = await stored(b"{}", timeout=0.05)

    async def stall(_: PayloadReference) -> AsyncIterator[bytes]:
        await asyncio.Event().wait()
        yield b""

    store.get = stall  # type: ignore[method-assign]
    with pytest.raises(PayloadStoreUnavailable):
        await PayloadResolver([store]).load(reference)


async def test_discard_is_best_effort() -> None:
    store, reference = await stored(b"{}")
    resolver = PayloadResolver([store])
    store.fail_with = ConnectionError("down")
    assert await resolver.discard(reference) is False
    store.fail_with = None
    assert await resolver.discard(reference) is True
    assert store.objects == {}
    assert await resolver.discard(ref(store="nope")) is False  # an invalid reference is never sent
