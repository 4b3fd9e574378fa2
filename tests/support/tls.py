"""What the TLS tests need: the test CA material, the brokers' TLS URLs, and a tap.

``scripts/services/tls.sh up`` creates the material (``scripts/test`` exports its directory as
``CONVEYOR_TEST_TLS_DIR``); the RabbitMQ and Pulsar scripts serve TLS with it for the name
``localhost`` only (their ``tls-url``s; Pulsar 6651 and https 8443). A missing file is a
failure, never a skip.

``TapProxy`` forwards a local port to a broker and keeps every byte the client sent, so a test
can show that nothing went over the wire in plaintext.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

__all__ = ["TLS_FILES", "TapProxy", "amqps_url", "pulsar_tls_url", "tls_dir", "with_host_port"]

TLS_FILES = ("ca.pem", "server.pem", "wrong-ca.pem")
_CHUNK = 64 * 1024
_RABBITMQ_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "services" / "rabbitmq.sh"


def tls_dir() -> Path:
    """The directory of ``scripts/services/tls.sh`` (``CONVEYOR_TEST_TLS_DIR``, else its default)."""
    explicit = os.environ.get("CONVEYOR_TEST_TLS_DIR", "").strip()
    cache = os.environ.get("CONVEYOR_CACHE_DIR", "").strip() or str(Path.home() / ".cache" / "conveyor")
    directory = Path(explicit) if explicit else Path(cache) / "tls"
    missing = [name for name in TLS_FILES if not (directory / name).is_file()]
    if missing:
        pytest.fail(
            f"TLS test material missing in {directory} ({', '.join(missing)}): run scripts/services/tls.sh up",
            pytrace=False,
        )
    return directory


def amqps_url() -> str:
    """``CONVEYOR_AMQPS_URL``, else the TLS listener of ``scripts/services/rabbitmq.sh`` (``tls-url``).

    The script's URL only fits when the broker under test (``CONVEYOR_AMQP_URL``) is the
    script's node too; for another broker, ``CONVEYOR_AMQPS_URL`` must name its TLS listener.
    """
    explicit = os.environ.get("CONVEYOR_AMQPS_URL", "").strip()
    if explicit:
        return explicit
    plain = os.environ.get("CONVEYOR_AMQP_URL", "").strip()
    if not plain:
        pytest.fail("CONVEYOR_AMQP_URL is not set: run scripts/services/rabbitmq.sh up", pytrace=False)
    own_plain, own_tls = _rabbitmq_script_urls()
    if plain != own_plain:
        pytest.fail(
            "CONVEYOR_AMQP_URL is not the broker of scripts/services/rabbitmq.sh: "
            "set CONVEYOR_AMQPS_URL to its amqps:// listener", pytrace=False,
        )
    return own_tls


@functools.cache
def _rabbitmq_script_urls() -> tuple[str, str]:
    """``rabbitmq.sh url`` (as if no external broker were given) and ``rabbitmq.sh tls-url``."""
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_AMQP_URL"}
    urls = []
    for command in ("url", "tls-url"):
        done = subprocess.run(["bash", str(_RABBITMQ_SCRIPT), command], env=env, capture_output=True,
                              text=True, timeout=30, check=False)
        if done.returncode != 0 or not done.stdout.strip():
            pytest.fail(f"scripts/services/rabbitmq.sh {command} failed: {done.stderr[-500:]}", pytrace=False)
        urls.append(done.stdout.strip().splitlines()[-1])
    return urls[0], urls[1]


def pulsar_tls_url() -> str:
    """``CONVEYOR_PULSAR_TLS_URL``, else pulsar+ssl://localhost:6651 (admin: https://localhost:8443)."""
    return os.environ.get("CONVEYOR_PULSAR_TLS_URL", "").strip() or "pulsar+ssl://localhost:6651"


def with_host_port(url: str, host: str, port: int) -> str:
    """``url`` pointed at ``host:port`` instead, keeping user, password, path and query."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class TapProxy:
    """Listens on 127.0.0.1:<free port>, forwards to ``target``, records what clients sent.

        async with TapProxy("127.0.0.1", 5671) as tap:
            url = with_host_port(url, "localhost", tap.port)   # "localhost": the certificate's name
            ...
            assert tap.sent.startswith(b"\\x16\\x03")             # a TLS handshake record came first
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.connections: list[bytearray] = []  # client → broker bytes, per connection
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> TapProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def sent(self) -> bytes:
        """Everything clients sent, all connections in order."""
        return b"".join(bytes(chunk) for chunk in self.connections)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        record = bytearray()
        self.connections.append(record)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            self._writers.add(upstream_writer)
            await asyncio.gather(
                self._pump(reader, upstream_writer, record), self._pump(upstream_reader, writer, None)
            )
        except OSError:
            pass
        finally:
            for each in (writer, upstream_writer):
                if each is not None:
                    self._writers.discard(each)
                    each.transport.abort()
            self._tasks.discard(task)

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, record: bytearray | None) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(_CHUNK):
                if record is not None:
                    record.extend(data)
                sink.write(data)
                await sink.drain()
        # One side finished: end the other, so both pumps (and the link) end.
        sink.transport.abort()
