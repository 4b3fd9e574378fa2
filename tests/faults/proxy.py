"""A TCP fault proxy the fault-injection tests own: clients connect to it, it forwards to a
target (a broker, a database), and the test breaks the path on purpose.

    async with FaultProxy("127.0.0.1", 5672) as proxy:
        url = proxy.rewrite_url("amqp://conveyor:conveyor@127.0.0.1:5672/")
        ...
        proxy.cut()            # reset every open connection (both sides), as a dead NAT/LB does
        proxy.blackhole(5.0)   # nothing flows for 5 s, connections stay open (a silent network)
        proxy.refuse()         # new connections get ECONNREFUSED (the listener is closed)
        proxy.accept()         # … and are accepted again, on the same port

A blackhole *stalls* bytes rather than dropping them: that is what TCP does over a silent
path (the kernel retransmits), so a stream is never corrupted mid-frame; the proxy stops
reading, backpressure fills the buffers, and what was sent arrives after the blackhole ends,
unless the endpoints gave up first (heartbeats, timeouts), which is what the tests look for.
Connections made during a blackhole are accepted but not forwarded until it ends.

Only for loopback targets in tests; it listens on 127.0.0.1 by default.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from urllib.parse import urlsplit, urlunsplit

__all__ = ["FaultProxy"]

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.cut = False
        self.dead = asyncio.Event()

    def abort(self) -> None:
        self.cut = True
        self.dead.set()
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()  # RST, at once, without flushing


class FaultProxy:
    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.target = (target_host, target_port)
        self.host = host
        self._port = port
        self._connect_timeout = connect_timeout
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._heal: asyncio.TimerHandle | None = None
        self.accepted_total = 0

    # -- lifecycle ---------------------------------------------------------------------
    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> FaultProxy:
        self.accept()
        return self

    async def stop(self) -> None:
        self.refuse()
        self.cut()
        self.restore()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    # -- where clients connect -----------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("the proxy has not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def rewrite_url(self, url: str) -> str:
        """``url`` with its host:port replaced by the proxy's (credentials and path kept)."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{self.host}:{self.port}" if userinfo else f"{self.host}:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def connections(self) -> int:
        """Client connections open now."""
        return len(self._links)

    @property
    def blackholed(self) -> bool:
        return not self._flowing.is_set()

    @property
    def accepting(self) -> bool:
        return self._listener is not None

    # -- faults ------------------------------------------------------------------------
    def cut(self) -> int:
        """Reset every open connection on both sides; returns how many were cut."""
        links = list(self._links)
        for link in links:
            link.abort()
        return len(links)

    def blackhole(self, seconds: float | None = None) -> None:
        """Stop forwarding in both directions for ``seconds`` (``None``: until ``restore``)."""
        if self._heal is not None:
            self._heal.cancel()
            self._heal = None
        self._flowing.clear()
        if seconds is not None:
            self._heal = asyncio.get_running_loop().call_later(max(0.0, seconds), self.restore)

    def restore(self) -> None:
        """End a blackhole: held bytes and connections flow again."""
        if self._heal is not None:
            self._heal.cancel()
            self._heal = None
        self._flowing.set()

    def refuse(self) -> None:
        """Close the listener: new connections are refused; open ones are untouched."""
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is not None:
            acceptor.cancel()
        listener, self._listener = self._listener, None
        if listener is not None:
            # Unregister before closing: the cancelled accept would only do it on the next
            # loop turn, and a new socket may reuse the descriptor number by then.
            asyncio.get_running_loop().remove_reader(listener.fileno())
            listener.close()

    def accept(self) -> None:
        """Listen (again, on the same port): new connections are accepted and forwarded."""
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self._port))
            listener.listen(128)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._port = listener.getsockname()[1]
        self._listener = listener
        self._acceptor = self._spawn(self._accept_loop(listener))

    # -- forwarding --------------------------------------------------------------------
    def _spawn(self, coro: object) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError:
                return  # the listener was closed (refuse/stop)
            self.accepted_total += 1
            self._spawn(self._serve(conn))

    async def _serve(self, conn: socket.socket) -> None:
        try:
            client_reader, client_writer = await asyncio.open_connection(sock=conn)
        except OSError:
            conn.close()
            return
        link = _Link(client_writer)
        self._links.add(link)
        try:
            if not await self._until_flowing(link):  # nothing gets through a blackhole, not even a connect
                return
            try:
                upstream_reader, upstream_writer = await asyncio.wait_for(
                    asyncio.open_connection(*self.target), self._connect_timeout
                )
            except (OSError, TimeoutError):
                log.debug("fault proxy: target %s:%s unreachable", *self.target)
                link.abort()
                return
            link.upstream = upstream_writer
            if link.cut:  # cut while connecting
                link.abort()
                return
            await asyncio.gather(
                self._pump(link, client_reader, upstream_writer),
                self._pump(link, upstream_reader, client_writer),
            )
        finally:
            self._links.discard(link)
            for writer in (link.client, link.upstream):
                if writer is not None:
                    writer.close()

    async def _until_flowing(self, link: _Link) -> bool:
        """Wait out a blackhole; ``False`` if the link was cut meanwhile."""
        if not self._flowing.is_set() and not link.cut:
            waiters = {asyncio.ensure_future(self._flowing.wait()), asyncio.ensure_future(link.dead.wait())}
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        return not link.cut

    async def _pump(self, link: _Link, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while await self._until_flowing(link):
                data = await source.read(_CHUNK)
                if not data:
                    break
                if not await self._until_flowing(link):  # a blackhole that began while we read
                    return
                sink.write(data)
                await sink.drain()
            else:
                return
            if sink.can_write_eof() and not sink.is_closing():
                sink.write_eof()  # pass a half-close through
        except (ConnectionError, OSError):
            link.abort()
