"""The S3 payload store against a real S3-compatible server (S3Proxy; CONVEYOR_S3_URL)."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web

from conveyor.common.errors import (
    MessageTooLarge,
    PayloadIntegrityError,
    PayloadMissing,
    PayloadReferenceInvalid,
    PayloadStoreUnavailable,
)
from conveyor.common.payload_store.s3 import NoRedirectHTTPSession, S3PayloadStore
from conveyor.consumer.ops.payload_sweep import sweep
from conveyor.consumer.payloads import PayloadResolver
from tests.support.s3 import TEST_BUCKET, make_s3_store, remove_prefix

WHEN = datetime(2026, 5, 6, tzinfo=UTC)
MIB = 1024 * 1024


@pytest.fixture
async def store() -> AsyncIterator[S3PayloadStore]:
    created = await make_s3_store(part_size=5 * MIB, chunk_size=256 * 1024, max_bytes=32 * MIB)
    try:
        yield created
    finally:
        await remove_prefix(created)


async def test_a_large_upload_streams_in_parts_and_downloads_in_chunks(store: S3PayloadStore) -> None:
    data = os.urandom(12 * MIB)
    before = store.requests
    reference = await store.put_payload("t.big", "job-1", data, WHEN)
    assert store.requests - before == 5, "create + 3 parts of 5/5/2 MiB + complete"
    chunks = [chunk async for chunk in store.get(reference)]
    assert len(chunks) >= 48 and max(map(len, chunks)) <= 256 * 1024  # streamed, never one 12 MiB read
    assert await PayloadResolver([store]).fetch(reference) == data


async def test_a_small_upload_is_one_put(store: S3PayloadStore) -> None:
    before = store.requests
    reference = await store.put_payload("t.small", "job-2", b'{"a": 1}', WHEN)
    assert store.requests - before == 1
    assert await PayloadResolver([store]).load(reference) == {"a": 1}


async def test_size_caps_hold_before_any_request(store: S3PayloadStore) -> None:
    before = store.requests
    with pytest.raises(MessageTooLarge):
        await store.put_payload("t.big", "job-3", b"x" * (32 * MIB + 1), WHEN)
    huge = store.reference(f"{store.prefix}/t.big/x.json", b"").model_copy(update={"size": 33 * MIB})
    with pytest.raises(PayloadReferenceInvalid):
        await PayloadResolver([store]).fetch(huge)
    assert store.requests == before


async def test_an_object_longer_than_its_reference_is_refused_unread(store: S3PayloadStore) -> None:
    reference = await store.put_payload("t.big", "job-4", b"y" * (2 * MIB), WHEN)
    claimed_small = reference.model_copy(update={"size": 10})
    with pytest.raises(PayloadIntegrityError):
        await PayloadResolver([store]).fetch(claimed_small)


async def test_a_sha_mismatch_is_detected(store: S3PayloadStore) -> None:
    reference = await store.put_payload("t.sha", "job-5", b'{"v": "original"}', WHEN)
    await store.put(reference.key, b'{"v": "forgery!"}', size=17)
    with pytest.raises(PayloadIntegrityError):
        await PayloadResolver([store]).fetch(reference)
    wrong = reference.model_copy(update={"sha256": hashlib.sha256(b"nope").hexdigest()})
    with pytest.raises(PayloadIntegrityError):
        await PayloadResolver([store]).fetch(wrong)


async def test_a_missing_object_is_payload_missing_and_delete_is_idempotent(store: S3PayloadStore) -> None:
    reference = await store.put_payload("t.gone", "job-6", b"{}", WHEN)
    await store.delete(reference)
    await store.delete(reference)
    with pytest.raises(PayloadMissing):
        await PayloadResolver([store]).fetch(reference)


def test_the_client_is_configured_never_to_follow_redirects() -> None:
    store = S3PayloadStore("b-1", endpoint_url="http://127.0.0.1:1")
    assert store.config.http_session_cls is NoRedirectHTTPSession
    assert store.config.signature_version == "s3v4"
    assert store.config.s3 == {"addressing_style": "path"}
    assert store.config.retries == {"mode": "standard", "total_max_attempts": 2}


async def test_a_redirect_is_never_followed(store: S3PayloadStore) -> None:
    reference = await store.put_payload("t.redirect", "job-7", b'{"a": 1}', WHEN)
    target_hits: list[str] = []
    redirect_hits: list[str] = []

    async def target(request: web.Request) -> web.Response:
        target_hits.append(request.path_qs)
        return web.Response(body=b'{"a": 1}')

    async def redirect(request: web.Request) -> web.Response:
        redirect_hits.append(request.path_qs)
        raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{target_port}{request.path_qs}")

    runners = []
    ports = []
    for handler in (target, redirect):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    target_port, redirect_port = ports
    redirected = S3PayloadStore(TEST_BUCKET, prefix=store.prefix, endpoint_url=f"http://127.0.0.1:{redirect_port}",
                                access_key="conveyor", secret_key="conveyor-secret")
    try:
        with pytest.raises(PayloadStoreUnavailable, match="redirects are never followed"):
            await PayloadResolver([redirected]).fetch(reference)
    finally:
        await redirected.close()
        for runner in runners:
            await runner.cleanup()
    assert redirect_hits and target_hits == []


async def test_an_unreachable_endpoint_is_a_retryable_store_error() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = S3PayloadStore(TEST_BUCKET, endpoint_url=f"http://127.0.0.1:{port}", access_key="k", secret_key="s",
                           connect_timeout=1, read_timeout=1, timeout=10)
    reference = store.reference(f"{store.prefix}/t.x/y.json", b"{}")
    started = time.monotonic()
    try:
        with pytest.raises(PayloadStoreUnavailable):
            await PayloadResolver([store]).fetch(reference)
        with pytest.raises(PayloadStoreUnavailable):
            await store.put(reference.key, b"{}", size=2)
    finally:
        await store.close()
    assert time.monotonic() - started < 10


async def test_wrong_credentials_are_a_store_error_not_a_rejection(store: S3PayloadStore) -> None:
    reference = await store.put_payload("t.auth", "job-8", b"{}", WHEN)
    intruder = S3PayloadStore(TEST_BUCKET, prefix=store.prefix, endpoint_url=store.endpoint_url,
                              access_key="conveyor", secret_key="wrong-secret")
    try:
        with pytest.raises(PayloadStoreUnavailable):
            await PayloadResolver([intruder]).fetch(reference)
    finally:
        await intruder.close()


async def test_the_sweep_lists_and_deletes_old_objects_in_the_prefix_only(store: S3PayloadStore) -> None:
    for i in range(3):
        await store.put_payload("t.sweep", f"job-{i}", b"{}", WHEN)
    neighbour = await make_s3_store()
    try:
        await neighbour.put_payload("t.sweep", "other", b"{}", WHEN)
        later = datetime.now(UTC) + timedelta(days=8)
        dry = await sweep(store, timedelta(days=7), now=later, dry_run=True)
        assert (dry.scanned, dry.orphans, dry.deleted) == (3, 3, 0)
        assert (await sweep(store, timedelta(days=7), now=datetime.now(UTC))).orphans == 0
        assert (await sweep(store, timedelta(days=7), now=later)).deleted == 3
        assert [o async for o in store.list_objects()] == []
        assert len([o async for o in neighbour.list_objects()]) == 1
    finally:
        await remove_prefix(neighbour)
