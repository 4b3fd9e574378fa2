"""The S3-compatible payload store (AWS S3, MinIO, S3Proxy, Ceph RGW …), on aiobotocore.

- Uploads stream: a body that fits one part is one ``PutObject``; a larger one is a
  multipart upload of ``part_size`` parts (aborted if anything fails), so memory stays at
  one part whatever the payload size. Downloads stream in chunks and stop one byte past the
  size the reference claims.
- Bounded: ``max_bytes`` per object, ``timeout`` for a whole upload or download, connect and
  read timeouts per request, and few SDK-level retries (Conveyor retries the job itself).
- Never follows redirects: the HTTP session refuses 3xx responses, and botocore's S3
  region redirector is switched off, so a store (or anything answering in its place) can
  never send the worker, its credentials or a payload to another host.
- Errors are mapped here: a missing object is ``PayloadMissing``; anything else the store or
  the network did is ``PayloadStoreUnavailable`` (retryable, counted by the job's breaker).

Checksums: botocore's CRC request/response checksums are set to ``when_required`` because
many S3-compatible servers do not implement them; integrity is checked end to end with the
reference's sha256 instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from datetime import UTC
from typing import Any, Unpack

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import SecretStr

from conveyor.common.errors import (
    ConfigurationError,
    MessageTooLarge,
    PayloadIntegrityError,
    PayloadMissing,
    PayloadStoreUnavailable,
)
from conveyor.common.payload_store.base import (
    CHUNK_SIZE,
    PayloadLimits,
    PayloadStore,
    StoredObject,
    chunked,
)
from conveyor.schemas.envelope import PayloadReference

__all__ = ["S3PayloadStore", "client_config"]

log = logging.getLogger(__name__)

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
_MISSING = {"NoSuchKey", "404", "NotFound"}


class _NoRedirects:
    """The aiohttp session as aiobotocore uses it (``request``), with redirects refused."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    def request(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["allow_redirects"] = False
        return self._session.request(*args, **kwargs)


class NoRedirectHTTPSession(AIOHTTPSession):  # type: ignore[misc]  # aiobotocore ships no type hints
    """aiobotocore's HTTP session, except that a 3xx answer is returned, never followed."""

    async def _get_session(self, proxy_url: str | None) -> Any:
        return _NoRedirects(await super()._get_session(proxy_url))


def _no_region_redirect(context: dict[str, Any], **_: Any) -> None:
    # botocore's S3RegionRedirector re-sends a request answered by 301/307 or a wrong-region
    # error to wherever the answer points; it skips requests it believes it already redirected.
    context.setdefault("s3_redirect", {})["redirected"] = True


def client_config(*, region: str, connect_timeout: float, read_timeout: float, max_attempts: int) -> AioConfig:
    return AioConfig(
        region_name=region,
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        http_session_cls=NoRedirectHTTPSession,
    )


class S3PayloadStore(PayloadStore):
    kind = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "payloads",
        name: str = "s3",
        endpoint_url: str | None = None,
        access_key: str | None = None,
        secret_key: SecretStr | str | None = None,
        region: str = "us-east-1",
        part_size: int = 8 * 1024 * 1024,
        chunk_size: int = CHUNK_SIZE,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 2,
        **limits: Unpack[PayloadLimits],
    ) -> None:
        super().__init__(name=name, bucket=bucket, prefix=prefix, **limits)
        if part_size < MIN_PART_SIZE:
            raise ConfigurationError(f"part_size must be ≥ {MIN_PART_SIZE} (S3's minimum part size)")
        if endpoint_url is not None and not endpoint_url.startswith(("http://", "https://")):
            raise ConfigurationError("the S3 endpoint URL must start with http:// or https://")
        self.endpoint_url = endpoint_url
        self._access_key = access_key
        self._secret = secret_key if isinstance(secret_key, SecretStr | None) else SecretStr(secret_key)
        self.region = region
        self.part_size = part_size
        self._chunk = chunk_size
        self.config = client_config(
            region=region, connect_timeout=connect_timeout, read_timeout=read_timeout, max_attempts=max_attempts
        )
        self.requests = 0  # HTTP requests sent, counted by a before-send hook (tests, metrics)
        self._client_cm: Any = None
        self._client: Any = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:  # never the secret
        return f"S3PayloadStore(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint={self.endpoint_url!r})"

    # -- connection ------------------------------------------------------------------
    async def client(self) -> Any:
        """The aiobotocore client, created on first use (no request is made to create it)."""
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    cm = get_session().create_client(
                        "s3",
                        endpoint_url=self.endpoint_url,
                        aws_access_key_id=self._access_key,
                        aws_secret_access_key=self._secret.get_secret_value() if self._secret else None,
                        config=self.config,
                    )
                    client = await cm.__aenter__()
                    client.meta.events.register("before-call.s3", _no_region_redirect)
                    client.meta.events.register("before-send.s3", self._count_request)
                    self._client_cm, self._client = cm, client
        return self._client

    def _count_request(self, **_: Any) -> None:
        self.requests += 1  # must return None: a value would replace the real response

    async def close(self) -> None:
        cm, self._client_cm, self._client = self._client_cm, None, None
        if cm is not None:
            with contextlib.suppress(Exception):
                await cm.__aexit__(None, None, None)

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (tests, benchmarks, first-run set-ups)."""
        client = await self.client()
        try:
            await client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _code(exc) not in {"404", "NoSuchBucket", "NotFound"}:
                raise self._unavailable("head_bucket", exc) from exc
        except (BotoCoreError, aiohttp.ClientError) as exc:
            raise self._unavailable("head_bucket", exc) from exc
        try:
            await client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise self._unavailable("create_bucket", exc) from exc

    # -- operations ------------------------------------------------------------------
    async def put(self, key: str, body: bytes | AsyncIterable[bytes], *, size: int) -> None:
        self._check_key(key)
        if size > self.max_bytes:
            raise MessageTooLarge(f"payload is {size} bytes, the store's limit is {self.max_bytes}")
        try:
            async with asyncio.timeout(self.timeout):
                await self._upload(key, body)
        except TimeoutError:
            raise PayloadStoreUnavailable(f"S3 upload took longer than {self.timeout:g}s") from None
        except (ClientError, BotoCoreError, aiohttp.ClientError) as exc:
            raise self._unavailable("upload", exc) from exc

    async def _upload(self, key: str, body: bytes | AsyncIterable[bytes]) -> None:
        client = await self.client()
        parts = self._parts(body)
        first = await anext(parts, b"")
        second = await anext(parts, None)
        if second is None:
            await client.put_object(Bucket=self.bucket, Key=key, Body=first, ContentType="application/json")
            return
        created = await client.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType="application/json")
        upload_id = created["UploadId"]
        done: list[dict[str, Any]] = []
        try:
            for part in (first, second):
                done.append(await self._upload_part(client, key, upload_id, len(done) + 1, part))
            async for part in parts:
                done.append(await self._upload_part(client, key, upload_id, len(done) + 1, part))
            await client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id))
            raise

    async def _upload_part(self, client: Any, key: str, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
        answer = await client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data)
        return {"PartNumber": number, "ETag": answer["ETag"]}

    async def _parts(self, body: bytes | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """Re-chunk the body into ``part_size`` parts, enforcing the size cap as it streams."""
        buffer = bytearray()
        total = 0
        async for chunk in chunked(body, self._chunk):
            total += len(chunk)
            if total > self.max_bytes:
                raise MessageTooLarge(f"payload is over the store's {self.max_bytes}-byte limit")
            buffer += chunk
            while len(buffer) >= self.part_size:
                yield bytes(buffer[: self.part_size])
                del buffer[: self.part_size]
        if buffer or total == 0:
            yield bytes(buffer)

    async def get(self, reference: PayloadReference) -> AsyncGenerator[bytes, None]:
        self.validate(reference)  # before anything touches the network
        deadline = asyncio.get_running_loop().time() + self.timeout
        client = await self.client()
        try:
            async with asyncio.timeout_at(deadline):
                response = await client.get_object(Bucket=self.bucket, Key=reference.key)
        except TimeoutError:
            raise PayloadStoreUnavailable(f"S3 download took longer than {self.timeout:g}s") from None
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise PayloadMissing("payload object not found") from None
            raise self._unavailable("download", exc) from exc
        except (BotoCoreError, aiohttp.ClientError) as exc:
            raise self._unavailable("download", exc) from exc
        stream = response["Body"]
        try:
            length = response.get("ContentLength")
            if length is not None and length != reference.size:
                raise PayloadIntegrityError(f"object is {length} bytes, the reference says {reference.size}")
            remaining = reference.size + 1  # one byte more shows an object longer than claimed
            while remaining > 0:
                chunk = await self._read(stream, min(self._chunk, remaining), deadline)
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk
        finally:
            stream.close()

    async def _read(self, stream: Any, size: int, deadline: float) -> bytes:
        try:
            async with asyncio.timeout_at(deadline):
                chunk: bytes = await stream.read(size)
                return chunk
        except TimeoutError:
            raise PayloadStoreUnavailable(f"S3 download took longer than {self.timeout:g}s") from None
        except (BotoCoreError, aiohttp.ClientError) as exc:
            raise self._unavailable("download", exc) from exc

    async def delete(self, reference: PayloadReference) -> None:
        self.validate(reference)
        await self.delete_key(reference.key)

    async def delete_key(self, key: str) -> None:
        self._check_key(key)
        client = await self.client()
        try:
            async with asyncio.timeout(self.timeout):
                await client.delete_object(Bucket=self.bucket, Key=key)
        except TimeoutError:
            raise PayloadStoreUnavailable(f"S3 delete took longer than {self.timeout:g}s") from None
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return
            raise self._unavailable("delete", exc) from exc
        except (BotoCoreError, aiohttp.ClientError) as exc:
            raise self._unavailable("delete", exc) from exc

    async def list_objects(self) -> AsyncIterator[StoredObject]:
        client = await self.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + "/")
        try:
            async for page in pages:
                for item in page.get("Contents", []):
                    modified = item["LastModified"]
                    yield StoredObject(self.bucket, item["Key"], int(item["Size"]), modified.astimezone(UTC))
        except (ClientError, BotoCoreError, aiohttp.ClientError) as exc:
            raise self._unavailable("list", exc) from exc

    def _unavailable(self, op: str, exc: BaseException) -> PayloadStoreUnavailable:
        if isinstance(exc, ClientError):
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            detail = f"{_code(exc)} (HTTP {status})"
            if status is not None and 300 <= int(status) < 400:
                detail += "; redirects are never followed"
        else:
            detail = type(exc).__name__
        return PayloadStoreUnavailable(f"S3 {op} failed: {detail}")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
