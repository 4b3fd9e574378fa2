"""The real S3-compatible store for tests (S3Proxy from ``scripts/services/s3.sh``).

``CONVEYOR_S3_URL`` must be set (``scripts/test`` starts the server and sets it); a missing
or unreachable store FAILS the test, it never skips. Each test gets its own key prefix in
the shared test bucket and removes its objects afterwards.
"""

from __future__ import annotations

import os
import uuid

import pytest

from conveyor.common.errors import PayloadStoreUnavailable
from conveyor.common.payload_store.s3 import S3PayloadStore
from tests.support.backends import require_env

__all__ = ["TEST_BUCKET", "make_s3_store", "remove_prefix", "s3_url"]

TEST_BUCKET = "conveyor-test"


def s3_url() -> str:
    """The S3 endpoint under test; fails loudly when it is not configured."""
    return require_env("CONVEYOR_S3_URL")


async def make_s3_store(*, prefix: str | None = None, **options: object) -> S3PayloadStore:
    """A store on the real server with a fresh prefix; the bucket is created if needed."""
    store = S3PayloadStore(
        TEST_BUCKET,
        prefix=prefix or f"t-{uuid.uuid4().hex[:12]}",
        endpoint_url=s3_url(),
        access_key=os.environ.get("CONVEYOR_S3_ACCESS_KEY", "conveyor"),
        secret_key=os.environ.get("CONVEYOR_S3_SECRET_KEY", "conveyor-secret"),
        **options,  # type: ignore[arg-type]
    )
    try:
        await store.ensure_bucket()
    except PayloadStoreUnavailable as exc:
        await store.close()
        pytest.fail(f"the S3 store at {s3_url()} is unreachable: {exc}", pytrace=False)
    return store


async def remove_prefix(store: S3PayloadStore) -> None:
    """Delete everything this test wrote, then close the client."""
    try:
        async for item in store.list_objects():
            await store.delete_key(item.key)
    finally:
        await store.close()
