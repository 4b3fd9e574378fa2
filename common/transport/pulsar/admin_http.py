"""One HTTP/1.1 request to the Pulsar admin API, on asyncio streams with h11 doing the protocol.

aiohttp was a large part of a Pulsar worker's resident memory (its import alone) for the
few admin calls a worker makes: a queue-depth sample per metrics interval. h11 is the HTTP/1.1
state machine and nothing else; a connection per request (``Connection: close``)
is plenty at that rate, and a cancelled request simply closes its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from conveyor.common.errors import TransportError

__all__ = ["HttpResponse", "request"]

_READ = 65536
_MAX_BODY = 32 * 1024 * 1024  # a topic's stats with thousands of consumers stay far below this
_CLOSE_WAIT = 1.0  # seconds given to a closing connection; the response is already in hand


@dataclass(frozen=True)
class HttpResponse:
    url: str
    status: int
    headers: dict[str, str]  # names lower-cased; a repeated header keeps its last value
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").partition(";")[0].strip().lower()

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


async def request(
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    ssl_context: ssl.SSLContext | None,
    timeout: float,
) -> HttpResponse:
    """Send ``method url`` and read the whole response within ``timeout`` seconds.

    Raises ``TimeoutError``, ``OSError`` (``ssl.SSLError`` included: the caller names TLS
    failures) or ``h11.ProtocolError`` for a broken exchange. https needs ``ssl_context``.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise TransportError(f"not an http(s) URL for the Pulsar admin API: {scheme or '?'}://…")
    secure = scheme == "https"
    if secure and ssl_context is None:
        raise TransportError("an https admin URL needs a TLS context")
    host = parts.hostname
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    deadline = asyncio.get_running_loop().time() + timeout
    async with asyncio.timeout_at(deadline):
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl_context if secure else None, server_hostname=host if secure else None
        )
    try:
        async with asyncio.timeout_at(deadline):
            return await _exchange(reader, writer, method, url, target, parts.netloc.rpartition("@")[2], headers)
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            await asyncio.wait_for(writer.wait_closed(), _CLOSE_WAIT)


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    method: str,
    url: str,
    target: str,
    host: str,
    headers: dict[str, str],
) -> HttpResponse:
    connection = h11.Connection(h11.CLIENT)
    sent = [("Host", host), ("Connection", "close"), ("Accept", "application/json"), *headers.items()]
    writer.write(connection.send(h11.Request(method=method, target=target, headers=sent)))
    writer.write(connection.send(h11.EndOfMessage()))
    await writer.drain()
    response: h11.Response | None = None
    body = bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await reader.read(_READ))  # b"" (closed) ends the message or raises
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > _MAX_BODY:
                raise TransportError(f"Pulsar admin API answered {method} with more than {_MAX_BODY} bytes")
        elif isinstance(event, h11.EndOfMessage):
            break
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionResetError("the Pulsar admin API closed the connection before answering")
        # h11.InformationalResponse (1xx): wait for the final response
    assert response is not None  # h11 delivers the Response before any Data or EndOfMessage
    names = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in response.headers}
    return HttpResponse(url, response.status_code, names, bytes(body))
