"""The filesystem payload store: the embedded one (one host, or a shared volume).

Objects live at ``<root>/<bucket>/<key>``. Every blocking call (open, read, write, fsync,
rename, walk) runs in a thread via ``asyncio.to_thread``, chunk by chunk, so the event loop
never waits on the disk. An upload is written to a temporary file beside its target,
fsynced and renamed into place: a reader sees the whole object or none of it. Paths are
resolved and must stay under the root, on top of the reference checks of the base class.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Unpack

from conveyor.common.errors import (
    MessageTooLarge,
    PayloadMissing,
    PayloadReferenceInvalid,
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

__all__ = ["FileSystemPayloadStore"]


class FileSystemPayloadStore(PayloadStore):
    kind = "file"

    def __init__(
        self,
        root: str | Path,
        *,
        name: str = "file",
        bucket: str = "conveyor",
        prefix: str = "payloads",
        chunk_size: int = CHUNK_SIZE,
        **limits: Unpack[PayloadLimits],
    ) -> None:
        super().__init__(name=name, bucket=bucket, prefix=prefix, **limits)
        self.root = Path(root).expanduser().absolute()
        self._chunk = chunk_size

    def _path(self, key: str) -> Path:
        self._check_key(key)
        base = (self.root / self.bucket).resolve()
        path = (base / key).resolve()
        if not path.is_relative_to(base):  # a symlink inside the tree pointing out of it
            raise PayloadReferenceInvalid("payload reference rejected: path leaves the store's root")
        return path

    async def put(self, key: str, body: bytes | AsyncIterable[bytes], *, size: int) -> None:
        if size > self.max_bytes:
            raise MessageTooLarge(f"payload is {size} bytes, the store's limit is {self.max_bytes}")
        path = await asyncio.to_thread(self._path, key)
        try:
            async with asyncio.timeout(self.timeout):
                await self._write(path, body)
        except TimeoutError:
            raise PayloadStoreUnavailable(f"upload took longer than {self.timeout:g}s") from None
        except OSError as exc:
            raise PayloadStoreUnavailable(f"cannot write payload: {exc.strerror or type(exc).__name__}") from exc

    async def _write(self, path: Path, body: bytes | AsyncIterable[bytes]) -> None:
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        handle: BinaryIO = await asyncio.to_thread(open, tmp, "xb")
        written = 0
        try:
            async for chunk in chunked(body, self._chunk):
                written += len(chunk)
                if written > self.max_bytes:
                    raise MessageTooLarge(f"payload is over the store's {self.max_bytes}-byte limit")
                await asyncio.to_thread(handle.write, chunk)
            await asyncio.to_thread(_flush_and_sync, handle)
        except BaseException:
            await asyncio.to_thread(handle.close)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(tmp.unlink)
            raise
        await asyncio.to_thread(handle.close)
        await asyncio.to_thread(os.replace, tmp, path)

    async def get(self, reference: PayloadReference) -> AsyncGenerator[bytes, None]:
        self.validate(reference)
        path = await asyncio.to_thread(self._path, reference.key)
        try:
            handle: BinaryIO = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise PayloadMissing("payload object not found") from None
        except OSError as exc:
            raise PayloadStoreUnavailable(f"cannot read payload: {exc.strerror or type(exc).__name__}") from exc
        deadline = asyncio.get_running_loop().time() + self.timeout
        try:
            remaining = reference.size + 1  # one byte more shows an object longer than claimed
            while remaining > 0:
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await asyncio.to_thread(handle.read, min(self._chunk, remaining))
                except TimeoutError:
                    raise PayloadStoreUnavailable(f"download took longer than {self.timeout:g}s") from None
                except OSError as exc:
                    raise PayloadStoreUnavailable(f"cannot read payload: {exc.strerror}") from exc
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)

    async def delete(self, reference: PayloadReference) -> None:
        self.validate(reference)
        await self.delete_key(reference.key)

    async def delete_key(self, key: str) -> None:
        path = await asyncio.to_thread(self._path, key)
        try:
            await asyncio.to_thread(path.unlink, True)
        except OSError as exc:
            raise PayloadStoreUnavailable(f"cannot delete payload: {exc.strerror}") from exc

    async def list_objects(self) -> AsyncIterator[StoredObject]:
        objects = await asyncio.to_thread(self._scan)
        for item in objects:
            yield item

    def _scan(self) -> list[StoredObject]:
        # An upload makes the root; a listing never does. A root that is not there is a typo
        # (S3's NoSuchBucket), not an empty store: the sweep said "0 objects" and exited 0.
        if not self.root.is_dir():
            raise PayloadStoreUnavailable(f"the store's root {self.root} is not a directory; nothing was stored there")
        base = self.root / self.bucket
        top = base / self.prefix
        found = []
        for directory, _, files in os.walk(top):
            for filename in files:  # includes ".…tmp" files of uploads that died half-way
                path = Path(directory, filename)
                with contextlib.suppress(FileNotFoundError):
                    stat = path.stat()
                    key = path.relative_to(base).as_posix()
                    modified = datetime.fromtimestamp(stat.st_mtime, UTC)
                    found.append(StoredObject(self.bucket, key, stat.st_size, modified))
        return sorted(found, key=lambda o: o.key)


def _flush_and_sync(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())
