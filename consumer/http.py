"""Health and metrics over HTTP: /healthz (alive), /readyz (consuming), /metrics.

Served on h11 (python-hyper's HTTP/1.1 state machine) over asyncio streams, one request per
connection: three GET routes do not need a web framework, and aiohttp's server was a large
part of every ``conveyor worker`` process's memory (issue 18, worker RSS). A slow or silent
client is cut after ``READ_TIMEOUT``; a malformed request gets a 400, an unknown path 404, a
method other than GET/HEAD 405.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass

import h11

from conveyor.common.errors import ConfigurationError
from conveyor.consumer.worker import Worker

__all__ = ["READ_TIMEOUT", "Endpoints", "HealthServer", "Reply"]

READ_TIMEOUT = 10.0  # seconds a client has to send its whole request head
_MAX_HEAD = 16 * 1024  # bytes of request line and headers

log = logging.getLogger("conveyor.http")


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"

    @classmethod
    def json(cls, value: object, status: int = 200) -> Reply:
        # json.dumps, as aiohttp's json_response wrote it: the same bytes for existing probes.
        return cls(status, json.dumps(value).encode(), "application/json; charset=utf-8")


class Endpoints:
    """/healthz, /readyz and /metrics on one listening socket; subclasses answer them.

    Bound to 127.0.0.1 unless configured otherwise: metrics are not for the internet."""

    # How the operator changes the port, for the one-line error when it is taken.
    port_setting = "--http-port (CONVEYOR_HTTP_PORT)"

    def __init__(self, host: str = "127.0.0.1", port: int = 9464) -> None:
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port: int | None = None

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._accept, self._host, self._port)
        except OSError as exc:  # a port in use is a setting to change: one line, not a traceback
            raise ConfigurationError(
                f"cannot serve /healthz, /readyz, /metrics on {self._host}:{self._port} ({exc.strerror}); "
                f"choose another {self.port_setting}, or 0 to turn them off"
            ) from None
        sockets = self._server.sockets
        self.port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    async def _healthz(self) -> Reply:
        raise NotImplementedError

    async def _readyz(self) -> Reply:
        raise NotImplementedError

    async def _metrics(self) -> Reply:
        raise NotImplementedError

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, h11.ProtocolError):
            pass  # the client went away, stalled or broke the protocol mid-reply: nothing to answer
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
        try:
            request = await asyncio.wait_for(_read_request(conn, reader), READ_TIMEOUT)
        except h11.RemoteProtocolError as exc:  # malformed, or a head past _MAX_HEAD (431)
            request, reply = None, Reply(exc.error_status_hint, b"bad request\n")
        else:
            if request is None:
                return  # closed before a whole request: nobody to answer
            reply = await self._route(request)
        head = request is not None and request.method == b"HEAD"
        headers = [
            ("content-type", reply.content_type), ("content-length", str(len(reply.body))), ("connection", "close"),
        ]
        writer.write(conn.send(h11.Response(status_code=reply.status, headers=headers)) or b"")
        if not head:
            writer.write(conn.send(h11.Data(data=reply.body)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        # Bounded too: a client that never reads would otherwise hold this task for good.
        await asyncio.wait_for(writer.drain(), READ_TIMEOUT)

    async def _route(self, request: h11.Request) -> Reply:
        path = request.target.split(b"?", 1)[0]
        answer = {b"/healthz": self._healthz, b"/readyz": self._readyz, b"/metrics": self._metrics}.get(path)
        if answer is None:
            return Reply(404, b"not found\n")
        if request.method not in (b"GET", b"HEAD"):
            return Reply(405, b"method not allowed\n")
        try:
            return await answer()
        except Exception:  # one broken answer must not take the endpoint down
            log.exception("HTTP %s failed", path.decode("latin-1"))
            return Reply(500, b"internal error\n")


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
    """The request head, or None when the client closes first."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(8192))  # b"" at EOF: h11 reports ConnectionClosed
            continue
        if isinstance(event, h11.Request):
            return event
        if isinstance(event, h11.ConnectionClosed):
            return None


class HealthServer(Endpoints):
    def __init__(self, worker: Worker, host: str = "127.0.0.1", port: int = 9464) -> None:
        super().__init__(host, port)
        self._worker = worker

    async def _healthz(self) -> Reply:
        # Answering at all proves the event loop is not stuck.
        return Reply.json({"status": "ok"})

    async def _readyz(self) -> Reply:
        ready = self._worker.ready
        return Reply.json({"ready": ready, "in_flight": self._worker.in_flight}, status=200 if ready else 503)

    async def _metrics(self) -> Reply:
        self._worker.metrics.consumers_attached.set(self._worker.attached_queues)
        return Reply(200, self._worker.metrics.render())
