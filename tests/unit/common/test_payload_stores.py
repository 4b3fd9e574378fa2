"""The filesystem and in-memory payload stores: one contract, streamed, bounded, confined."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from conveyor.common.errors import ConfigurationError, MessageTooLarge, PayloadMissing, PayloadReferenceInvalid
from conveyor.common.payload_store.base import PayloadStore, object_key
from conveyor.common.payload_store.factory import store_from_url
from conveyor.common.payload_store.filesystem import FileSystemPayloadStore
from conveyor.common.payload_store.memory import MemoryPayloadStore
from conveyor.common.payload_store.s3 import S3PayloadStore
from conveyor.common.settings import Settings

WHEN = datetime(2026, 3, 4, 5, 6, tzinfo=UTC)


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> PayloadStore:
    if request.param == "memory":
        return MemoryPayloadStore(chunk_size=1000, max_bytes=100_000)
    return FileSystemPayloadStore(tmp_path, chunk_size=1000, max_bytes=100_000)


async def collect(chunks: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in chunks]


async def test_round_trip_streams_in_chunks_and_returns_the_same_bytes(store: PayloadStore) -> None:
    data = os.urandom(4500)
    reference = await store.put_payload("images.resize", "job-1", data, WHEN)
    assert reference.store == store.name and reference.bucket == "conveyor"
    assert reference.size == 4500 and reference.sha256 == hashlib.sha256(data).hexdigest()
    chunks = await collect(store.get(reference))
    assert b"".join(chunks) == data
    assert len(chunks) == 5 and max(map(len, chunks)) <= 1000


async def test_upload_accepts_an_async_stream_of_chunks(store: PayloadStore) -> None:
    async def body() -> AsyncIterator[bytes]:
        for i in range(10):
            yield bytes([i]) * 300

    key = object_key(store.prefix, "t.job", "j", WHEN)
    await store.put(key, body(), size=3000)
    reference = store.reference(key, b"".join(bytes([i]) * 300 for i in range(10)))
    assert b"".join(await collect(store.get(reference))) == b"".join(bytes([i]) * 300 for i in range(10))


async def test_keys_are_namespaced_dated_and_unguessable() -> None:
    first = object_key("payloads", "images.resize", "job-1", WHEN)
    second = object_key("payloads", "images.resize", "job-1", WHEN)
    assert re.fullmatch(r"payloads/images\.resize/2026/03/04/job-1-[0-9a-f]{32}\.json", first)
    assert first != second


async def test_hostile_job_ids_and_types_never_shape_the_key() -> None:
    key = object_key("payloads", "a..b", "../../etc/passwd:x@y", WHEN)
    assert ".." not in key and key.count("/") == 5 and "@" not in key and ":" not in key


async def test_a_read_stops_one_byte_past_the_claimed_size(store: PayloadStore) -> None:
    data = b"x" * 5000
    reference = await store.put_payload("t.job", "j", data, WHEN)
    short = reference.model_copy(update={"size": 10})
    assert len(b"".join(await collect(store.get(short)))) == 11  # enough to prove it is longer


async def test_upload_over_the_size_cap_is_refused(store: PayloadStore) -> None:
    with pytest.raises(MessageTooLarge):
        await store.put(object_key(store.prefix, "t.job", "j", WHEN), b"x" * 100_001, size=100_001)

    async def lying() -> AsyncIterator[bytes]:  # claims little, streams a lot
        for _ in range(200):
            yield b"y" * 1000

    with pytest.raises(MessageTooLarge):
        await store.put(object_key(store.prefix, "t.job", "j", WHEN), lying(), size=10)
    assert [item async for item in store.list_objects()] == []


async def test_missing_object_is_payload_missing(store: PayloadStore) -> None:
    reference = store.reference(object_key(store.prefix, "t.job", "gone", WHEN), b"{}")
    with pytest.raises(PayloadMissing):
        await collect(store.get(reference))


async def test_delete_is_idempotent_and_listing_sees_only_the_prefix(store: PayloadStore) -> None:
    kept = await store.put_payload("t.job", "a", b"{}", WHEN)
    gone = await store.put_payload("t.job", "b", b"{}", WHEN)
    await store.delete(gone)
    await store.delete(gone)
    keys = [item.key async for item in store.list_objects()]
    assert keys == [kept.key]


@pytest.mark.parametrize("key", ["payloads/../x.json", "/payloads/x.json", "other/x.json", "payloads\\x.json",
                                 "payloads//x.json", "payloads/./x.json", "payloads/x\x00.json"])
async def test_stores_refuse_keys_outside_their_prefix(store: PayloadStore, key: str) -> None:
    with pytest.raises(PayloadReferenceInvalid):
        await store.put(key, b"{}", size=2)
    with pytest.raises(PayloadReferenceInvalid):
        await store.delete_key(key)


async def test_filesystem_upload_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    store = FileSystemPayloadStore(tmp_path)
    reference = await store.put_payload("t.job", "j", b'{"a": 1}', WHEN)
    path = tmp_path / "conveyor" / reference.key
    assert path.read_bytes() == b'{"a": 1}'
    assert [p.name for p in path.parent.iterdir()] == [path.name]


async def test_filesystem_refuses_a_symlink_that_leads_out_of_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_bytes(b'{"secret": 1}')
    store = FileSystemPayloadStore(tmp_path / "root")
    (tmp_path / "root" / "conveyor" / "payloads").mkdir(parents=True)
    (tmp_path / "root" / "conveyor" / "payloads" / "link").symlink_to(outside)
    reference = store.reference("payloads/link/secret.json", b'{"secret": 1}')
    with pytest.raises(PayloadReferenceInvalid):
        await collect(store.get(reference))


async def test_filesystem_io_runs_in_threads_not_on_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    offloaded: list[str] = []
    real = asyncio.to_thread

    async def spy(fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        offloaded.append(getattr(fn, "__name__", repr(fn)))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", spy)
    store = FileSystemPayloadStore(tmp_path)
    reference = await store.put_payload("t.job", "j", b"x" * 10, WHEN)
    await collect(store.get(reference))
    assert {"open", "write", "read", "replace"} <= set(offloaded)


def test_store_urls_build_the_right_store(tmp_path: Path) -> None:
    settings = Settings(s3_endpoint_url="http://127.0.0.1:9000", s3_access_key="k", s3_secret_key=SecretStr("s3cr3t"))
    s3 = store_from_url("s3://my-bucket/some/prefix", settings=settings)
    assert isinstance(s3, S3PayloadStore) and (s3.bucket, s3.prefix, s3.name) == ("my-bucket", "some/prefix", "s3")
    assert "s3cr3t" not in repr(s3)
    fs = store_from_url(f"file://{tmp_path}?bucket=jobs&prefix=big", settings=settings)
    assert isinstance(fs, FileSystemPayloadStore) and (fs.root, fs.bucket, fs.prefix) == (tmp_path, "jobs", "big")
    assert isinstance(store_from_url("memory://", settings=settings), MemoryPayloadStore)
    for bad in ("s3://user:pw@bucket/x", "file://host/path", "ftp://x/y", "s3://Bad_Bucket/x", "s3://b-1/../x"):
        with pytest.raises(ConfigurationError):
            store_from_url(bad, settings=settings)


def test_settings_read_the_payload_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_PAYLOAD_STORE", "s3://b-1/p")
    monkeypatch.setenv("CONVEYOR_PAYLOAD_THRESHOLD_BYTES", "4096")
    monkeypatch.setenv("CONVEYOR_S3_SECRET_KEY", "hidden")
    settings = Settings()
    assert settings.payload_store == "s3://b-1/p" and settings.payload_threshold_bytes == 4096
    assert "hidden" not in repr(settings)
