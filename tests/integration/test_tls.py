"""TLS to the real brokers: amqps:// (RabbitMQ, ``rabbitmq.sh tls-url``) and pulsar+ssl:// (Pulsar, 6651 + https 8443).

The servers present a certificate for ``DNS:localhost`` only, signed by the test CA of
``scripts/services/tls.sh`` (see tests/support/tls.py). Every failure must come from
``connect`` (or the first admin call) at once, as a ``TlsError``, without the password in its
text and without a plaintext byte on the wire: a tap between client and broker shows what was sent.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pydantic import BaseModel

from conveyor.common.errors import TlsError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.tls import TlsConfig
from conveyor.common.transport.base import Transport
from conveyor.common.transport.factory import transport_from_url
from conveyor.common.transport.pulsar.admin import AdminClient
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer
from tests.conftest import wait_until
from tests.support.tls import TapProxy, amqps_url, pulsar_tls_url, tls_dir, with_host_port

# A failed handshake is immediate; anything near the connect timeout would mean a retry loop.
FAST = 3.0
CONNECT_TIMEOUT = 10.0
# Sent as a Pulsar token (the test broker has authentication off and ignores it): it must only
# ever cross the wire encrypted.
PULSAR_TOKEN = "tls-test-token-7f3c9a"
TLS_RECORD = b"\x16\x03"  # a TLS handshake record (ClientHello) starts every TLS connection


class Echo(BaseModel):
    text: str


@pytest.fixture(scope="module")
def certs() -> Path:
    return tls_dir()


@pytest.fixture
def right(certs: Path) -> TlsConfig:
    return TlsConfig(ca_file=certs / "ca.pem")


@pytest.fixture
def wrong(certs: Path) -> TlsConfig:
    return TlsConfig(ca_file=certs / "wrong-ca.pem")


@pytest.fixture
def queue(request: pytest.FixtureRequest) -> str:
    return f"test.tls.{re.sub(r'[^A-Za-z0-9_.-]', '_', request.node.name)[:30]}.{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def opened() -> AsyncIterator[list[Transport]]:
    """Transports a test connected; closed at the end, last first."""
    transports: list[Transport] = []
    yield transports
    for transport in reversed(transports):
        await transport.close()


def amqp_password() -> str:
    return urlsplit(amqps_url()).password or ""


def pulsar_url(host: str = "localhost", port: int | None = None, **options: str) -> str:
    base = pulsar_tls_url()
    if port is not None:
        base = with_host_port(base, host, port)
    query = "&".join(f"{name}={value}" for name, value in {"token": PULSAR_TOKEN, **options}.items())
    return f"{base.rstrip('/')}/?{query}"


def broker_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "localhost", parts.port or 0


def make(url: str, tls: TlsConfig | None) -> Transport:
    options: dict[str, object] = {"connect_timeout": CONNECT_TIMEOUT}
    if url.startswith("amqps"):
        options["delay_tiers"] = (1.0,)
    return transport_from_url(url, tls=tls, **options)


async def connect_fails(url: str, tls: TlsConfig | None) -> TlsError:
    """``connect`` raises a ``TlsError`` quickly, with no secret in it; the error is returned."""
    transport = make(url, tls)
    started = time.monotonic()
    try:
        with pytest.raises(TlsError) as caught:
            await transport.connect()
    finally:
        await transport.close()
    elapsed = time.monotonic() - started
    assert elapsed < FAST, f"a TLS failure took {elapsed:.1f}s to surface: retried instead of failing"
    text = f"{caught.value} {caught.value!r}"
    for secret in (amqp_password(), PULSAR_TOKEN):
        assert secret not in text
    return caught.value


def assert_encrypted(tap: TapProxy, *secrets: str) -> None:
    """Every connection through the tap opened with a TLS handshake; no secret went in clear."""
    assert tap.connections, "the client never connected through the tap"
    for sent in tap.connections:
        assert bytes(sent[:2]) == TLS_RECORD, f"connection did not start with a TLS handshake: {bytes(sent[:16])!r}"
    everything = tap.sent
    for plaintext in (b"AMQP", *(secret.encode() for secret in secrets if secret)):
        assert plaintext not in everything


async def run_one_job(publisher: Transport, worker_transport: Transport, queue: str) -> None:
    """Publish one job through ``publisher`` and let a worker on ``worker_transport`` run it."""
    seen: list[str] = []
    jobs = JobRegistry()

    @jobs.job("tls.echo", queue=queue, timeout=10, model=Echo)
    async def echo(payload: Echo, ctx: JobContext) -> None:
        seen.append(payload.text)

    async with Producer.for_registry(publisher, jobs, manage_transport=False) as producer:
        await producer.publish("tls.echo", Echo(text="over TLS"))
    async with Worker(worker_transport, jobs, config=WorkerConfig(concurrency=2, grace_period=5)) as worker:
        await wait_until(lambda: worker.counts["succeeded"] == 1, timeout=20, what="the job to succeed over TLS")
    assert seen == ["over TLS"]
    assert (await publisher.stats(queue)).dead_letters == 0


async def cleanup(url: str, tls: TlsConfig, queue: str) -> None:
    async with make(url, tls) as cleaner:
        await cleaner.delete(queue)


# -- RabbitMQ ----------------------------------------------------------------------------------


@pytest.mark.rabbitmq
async def test_amqps_round_trip_with_the_test_ca_is_encrypted_end_to_end(
    right: TlsConfig, queue: str, opened: list[Transport]
) -> None:
    url = amqps_url()
    async with TapProxy(*broker_port(url)) as tap:
        publisher = make(with_host_port(url, "localhost", tap.port), right)
        await publisher.connect()
        opened.append(publisher)
        worker_transport = make(url, right)
        await worker_transport.connect()
        opened.append(worker_transport)
        try:
            await run_one_job(publisher, worker_transport, queue)
        finally:
            await cleanup(url, right, queue)
    assert len(tap.connections) == 2  # the publishing and the consuming connection, both TLS
    assert_encrypted(tap, amqp_password())


@pytest.mark.rabbitmq
async def test_amqps_with_the_wrong_ca_fails_at_connect_and_sends_nothing_in_clear(wrong: TlsConfig) -> None:
    url = amqps_url()
    async with TapProxy(*broker_port(url)) as tap:
        error = await connect_fails(with_host_port(url, "localhost", tap.port), wrong)
    assert "certificate verification failed" in str(error)
    assert_encrypted(tap, amqp_password())


@pytest.mark.rabbitmq
async def test_amqps_to_an_address_the_certificate_does_not_name_fails_with_a_hostname_error(
    right: TlsConfig,
) -> None:
    url = with_host_port(amqps_url(), "127.0.0.1", broker_port(amqps_url())[1])
    error = await connect_fails(url, right)
    assert "hostname" in str(error)
    assert "127.0.0.1" in str(error)


@pytest.mark.rabbitmq
async def test_amqps_without_a_ca_file_trusts_the_system_store_only(certs: Path) -> None:
    error = await connect_fails(amqps_url(), TlsConfig())
    assert "certificate verification failed" in str(error)


@pytest.mark.rabbitmq
async def test_amqps_to_a_plaintext_port_fails_and_never_falls_back(right: TlsConfig, amqp_url: str) -> None:
    plain = urlsplit(amqp_url)  # the broker's plaintext AMQP listener
    async with TapProxy(plain.hostname or "localhost", plain.port or 5672) as tap:
        error = await connect_fails(with_host_port(amqps_url(), "localhost", tap.port), right)
    assert "TLS handshake" in str(error)
    assert_encrypted(tap, amqp_password())


# -- Pulsar ------------------------------------------------------------------------------------


@pytest.mark.pulsar
async def test_pulsar_ssl_round_trip_with_the_test_ca_is_encrypted(
    right: TlsConfig, queue: str, opened: list[Transport]
) -> None:
    url = pulsar_url()
    async with TapProxy(*broker_port(pulsar_tls_url())) as tap:
        # Through the tap: the connection that looks topics up (and sends the token). The
        # broker then names localhost:6651 for the topic itself, which the client trusts too.
        publisher = make(pulsar_url(port=tap.port), right)
        await publisher.connect()
        opened.append(publisher)
        worker_transport = make(url, right)
        await worker_transport.connect()
        opened.append(worker_transport)
        try:
            await run_one_job(publisher, worker_transport, queue)  # stats(): the admin API over https
        finally:
            await cleanup(url, right, queue)
    assert_encrypted(tap, PULSAR_TOKEN)


@pytest.mark.pulsar
async def test_pulsar_ssl_with_the_wrong_ca_fails_at_connect_and_sends_nothing_in_clear(wrong: TlsConfig) -> None:
    async with TapProxy(*broker_port(pulsar_tls_url())) as tap:
        error = await connect_fails(pulsar_url(port=tap.port), wrong)
    assert "certificate verification failed" in str(error)
    assert_encrypted(tap, PULSAR_TOKEN)


@pytest.mark.pulsar
async def test_pulsar_ssl_to_an_address_the_certificate_does_not_name_fails_with_a_hostname_error(
    right: TlsConfig,
) -> None:
    error = await connect_fails(pulsar_url("127.0.0.1", broker_port(pulsar_tls_url())[1]), right)
    assert "hostname" in str(error)


@pytest.mark.pulsar
async def test_pulsar_ssl_without_a_ca_file_trusts_the_system_store_only(certs: Path) -> None:
    error = await connect_fails(pulsar_url(), TlsConfig())
    assert "certificate verification failed" in str(error)


@pytest.mark.pulsar
async def test_pulsar_admin_over_https_checks_the_host_name(right: TlsConfig, opened: list[Transport]) -> None:
    admin_host = "127.0.0.1"  # the admin API's address, not a name its certificate lists
    admin_port = urlsplit(make(pulsar_url(), right).admin_url).port  # type: ignore[attr-defined]
    transport = make(pulsar_url(admin_url=f"https://{admin_host}:{admin_port}"), right)
    await transport.connect()  # the binary protocol, on localhost, is fine
    opened.append(transport)
    with pytest.raises(TlsError, match="hostname"):
        await transport.depth("conveyor-tls-admin-probe")


@pytest.mark.pulsar
async def test_pulsar_admin_over_https_refuses_an_untrusted_certificate(wrong: TlsConfig, right: TlsConfig) -> None:
    base = make(pulsar_url(), right).admin_url  # type: ignore[attr-defined]
    context = await asyncio.to_thread(wrong.ssl_context)
    admin = AdminClient(base, timeout=CONNECT_TIMEOUT, headers={"Authorization": f"Bearer {PULSAR_TOKEN}"},
                        ssl_context=context)
    await admin.start()
    try:
        with pytest.raises(TlsError, match="certificate verification failed") as caught:
            await admin.subscriptions("/persistent/public/default/conveyor-tls-admin-probe")
    finally:
        await admin.close()
    assert PULSAR_TOKEN not in f"{caught.value} {caught.value!r}"
