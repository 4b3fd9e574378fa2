"""Build a payload store from ``CONVEYOR_PAYLOAD_STORE`` (a location, never a credential).

    file:///var/lib/conveyor/payloads        filesystem, rooted there
    s3://bucket/prefix                       S3-compatible; endpoint, keys and region come
                                             from CONVEYOR_S3_ENDPOINT_URL, CONVEYOR_S3_ACCESS_KEY,
                                             CONVEYOR_S3_SECRET_KEY, CONVEYOR_S3_REGION
    memory://                                in-process (tests; lost when the process ends)

``file:`` and ``memory:`` take ``?bucket=…&prefix=…`` (defaults ``conveyor`` and ``payloads``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from conveyor.common.errors import ConfigurationError
from conveyor.common.extras import require
from conveyor.common.payload_store.base import PayloadLimits, PayloadStore

if TYPE_CHECKING:
    from conveyor.common.settings import Settings

__all__ = ["store_from_settings", "store_from_url"]


def store_from_url(url: str, *, settings: Settings | None = None) -> PayloadStore:
    from conveyor.common.settings import Settings

    settings = settings or Settings()
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    limits: PayloadLimits = {"max_bytes": settings.payload_max_bytes, "timeout": settings.payload_timeout}
    if parts.scheme == "file":
        from conveyor.common.payload_store.filesystem import FileSystemPayloadStore

        root = unquote(parts.path)
        if parts.netloc or not root:
            raise ConfigurationError("a file payload store is file:///absolute/path")
        return FileSystemPayloadStore(
            root, bucket=query.get("bucket", "conveyor"), prefix=query.get("prefix", "payloads"), **limits
        )
    if parts.scheme == "s3":
        require("s3", "an s3:// payload store")
        from conveyor.common.payload_store.s3 import S3PayloadStore

        if not parts.netloc or "@" in parts.netloc or ":" in parts.netloc:
            raise ConfigurationError("an S3 payload store is s3://bucket/prefix (credentials go in CONVEYOR_S3_*)")
        return S3PayloadStore(
            parts.netloc,
            prefix=parts.path.strip("/") or "payloads",
            endpoint_url=settings.s3_endpoint_url,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            region=settings.s3_region,
            **limits,
        )
    if parts.scheme == "memory":
        from conveyor.common.payload_store.memory import MemoryPayloadStore

        return MemoryPayloadStore(
            bucket=query.get("bucket", "conveyor"), prefix=query.get("prefix", "payloads"), **limits
        )
    raise ConfigurationError(f"unknown payload store scheme {parts.scheme!r}: use file://, s3:// or memory://")


def store_from_settings(settings: Settings) -> PayloadStore | None:
    """The configured store, or None when ``CONVEYOR_PAYLOAD_STORE`` is not set."""
    if not settings.payload_store:
        return None
    return store_from_url(settings.payload_store, settings=settings)
