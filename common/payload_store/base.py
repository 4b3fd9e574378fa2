"""The payload-store contract (claim checks), key naming and reference validation.

A store keeps large payloads for the producer and hands them to the worker. It has one
``name`` (what references carry in ``store``), one ``bucket`` and one key ``prefix``: a
worker only ever reads inside them. Every reference is checked by ``validate_reference``
*before* any request is made, so a message can never steer a worker to another bucket, a
parent directory or another host:

- the store name must be one the worker has, the bucket must be the store's own bucket;
- the bucket is a plain name (no ``/``, ``\\``, ``@``, ``:``, NUL, ``..``);
- the key starts with ``<prefix>/``, uses only ``A-Z a-z 0-9 . _ - /``, has no empty,
  ``.`` or ``..`` segment, no leading ``/``, and is at most 1024 characters.

Uploads and downloads stream in chunks; every operation is bounded in size (``max_bytes``)
and time (``timeout``). Store failures are raised as ``PayloadStoreUnavailable``
(retryable), a missing object as ``PayloadMissing``.
"""

from __future__ import annotations

import abc
import hashlib
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TypedDict

from conveyor.common import bounds
from conveyor.common.defaults import DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_PAYLOAD_THRESHOLD, DEFAULT_STORE_TIMEOUT
from conveyor.common.errors import ConfigurationError, PayloadReferenceInvalid
from conveyor.schemas.envelope import PayloadReference

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "DEFAULT_PAYLOAD_THRESHOLD",
    "DEFAULT_STORE_TIMEOUT",
    "PayloadStore",
    "StoredObject",
    "check_bucket_name",
    "check_prefix",
    "chunked",
    "object_key",
    "validate_reference",
]

CHUNK_SIZE = 256 * 1024

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_KEY_CHARS = re.compile(r"^[A-Za-z0-9._/-]{1,1024}$")
_PREFIX = re.compile(r"^[A-Za-z0-9._-]{1,64}(/[A-Za-z0-9._-]{1,64}){0,7}$")
_SAFE_ID = re.compile(r"[^A-Za-z0-9_-]")


class PayloadLimits(TypedDict, total=False):
    """The ``**limits`` a store passes on to ``PayloadStore.__init__`` (for type checking)."""

    max_bytes: int
    timeout: float


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object as listed by a store (for the orphan sweep)."""

    bucket: str
    key: str
    size: int
    modified: datetime


def check_bucket_name(bucket: str) -> str:
    """A bucket (or directory) name: lowercase S3 rules, nothing that can change the host."""
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ConfigurationError(f"invalid bucket name {bucket!r}: use 3-63 of a-z 0-9 . -")
    return bucket


def check_prefix(prefix: str) -> str:
    if not _PREFIX.match(prefix) or any(part in (".", "..") for part in prefix.split("/")):
        raise ConfigurationError(f"invalid key prefix {prefix!r}: segments of A-Z a-z 0-9 . _ - joined by /")
    return prefix


def validate_reference(reference: PayloadReference, *, store: str, bucket: str, prefix: str, max_bytes: int) -> None:
    """Reject a reference that is not inside (store, bucket, prefix); makes no request."""

    def invalid(why: str) -> PayloadReferenceInvalid:
        # The values come from the message: say what is wrong, never echo them.
        return PayloadReferenceInvalid(f"payload reference rejected: {why}")

    if reference.store != store:
        raise invalid("unknown store")
    name = reference.bucket
    if any(c in name for c in ("/", "\\", "@", ":", "\x00")) or ".." in name or not _BUCKET.match(name):
        raise invalid("malformed bucket name")
    if name != bucket:
        raise invalid("bucket is not the configured one")
    key = reference.key
    if "\x00" in key or "\\" in key or key.startswith("/") or ".." in key:
        raise invalid("key escapes its prefix")
    if not _KEY_CHARS.match(key):
        raise invalid("key has characters outside A-Z a-z 0-9 . _ - /")
    if not key.startswith(prefix + "/") or any(part in ("", ".") for part in key.split("/")):
        raise invalid("key is outside the configured prefix")
    if reference.size > max_bytes:
        raise invalid(f"payload of {reference.size} bytes is over the {max_bytes}-byte limit")


def object_key(prefix: str, job_type: str, job_id: str, when: datetime) -> str:
    """``<prefix>/<job_type>/<yyyy>/<mm>/<dd>/<job_id>-<uuid>.json``: unguessable, namespaced."""
    safe_id = _SAFE_ID.sub("_", job_id)[:128]
    safe_type = re.sub(r"\.{2,}", "_", job_type)  # a job type may hold "..": never in a key
    return f"{prefix}/{safe_type}/{when:%Y/%m/%d}/{safe_id}-{uuid.uuid4().hex}.json"


async def chunked(data: bytes | Iterable[bytes] | AsyncIterable[bytes], size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
    """Any body as a stream of chunks of at most ``size`` bytes (bytes are sliced, not copied)."""
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data)
        for start in range(0, len(view), size):
            yield bytes(view[start : start + size])
        return
    if isinstance(data, AsyncIterable):
        async for chunk in data:
            yield chunk
        return
    for chunk in data:
        yield chunk


class PayloadStore(abc.ABC):
    """An object store for claim checks. Use as ``async with store:`` (or call ``close``)."""

    kind: str = ""

    def __init__(
        self,
        *,
        name: str,
        bucket: str,
        prefix: str,
        max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        timeout: float = DEFAULT_STORE_TIMEOUT,
    ) -> None:
        bounds.count("payload store max_bytes", max_bytes)
        bounds.seconds("payload store timeout", timeout)
        if not re.match(r"^[a-z][a-z0-9_-]{0,31}$", name):
            raise ConfigurationError(f"invalid payload store name {name!r}")
        self.name = name
        self.bucket = check_bucket_name(bucket)
        self.prefix = check_prefix(prefix.strip("/"))
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __aenter__(self) -> PayloadStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:  # noqa: B027 - optional hook: stores without connections need nothing
        """Release connections; the store may be used again afterwards (it reconnects)."""

    def validate(self, reference: PayloadReference) -> None:
        validate_reference(reference, store=self.name, bucket=self.bucket, prefix=self.prefix, max_bytes=self.max_bytes)

    def reference(self, key: str, data: bytes) -> PayloadReference:
        return PayloadReference(
            store=self.name, bucket=self.bucket, key=key, sha256=hashlib.sha256(data).hexdigest(), size=len(data)
        )

    async def put_payload(self, job_type: str, job_id: str, data: bytes, when: datetime) -> PayloadReference:
        """Upload ``data`` under a fresh key and return its claim check."""
        reference = self.reference(object_key(self.prefix, job_type, job_id, when), data)
        await self.put(reference.key, data, size=len(data))
        return reference

    @abc.abstractmethod
    async def put(self, key: str, body: bytes | AsyncIterable[bytes], *, size: int) -> None:
        """Store ``body`` (``size`` bytes, streamed in chunks) at ``key`` in this store's bucket."""

    @abc.abstractmethod
    def get(self, reference: PayloadReference) -> AsyncGenerator[bytes, None]:
        """Stream the object's bytes in chunks (an async generator; close it when done).

        Implementations call ``self.validate(reference)`` before any request, stop reading
        past ``reference.size`` bytes, raise ``PayloadMissing`` for an absent object and
        ``PayloadStoreUnavailable`` for anything the store did wrong.
        """

    @abc.abstractmethod
    async def delete(self, reference: PayloadReference) -> None:
        """Remove the object; an absent object is not an error."""

    @abc.abstractmethod
    def list_objects(self) -> AsyncIterator[StoredObject]:
        """Every object under this store's bucket and prefix (for the orphan sweep)."""

    @abc.abstractmethod
    async def delete_key(self, key: str) -> None:
        """Remove ``key`` (from ``list_objects``); must lie under the prefix."""

    def _check_key(self, key: str) -> None:
        probe = PayloadReference(store=self.name, bucket=self.bucket, key=key, sha256="0" * 64, size=0)
        self.validate(probe)
