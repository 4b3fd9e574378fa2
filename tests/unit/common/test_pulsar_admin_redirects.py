"""The Pulsar admin client follows a broker's redirect itself, and never from https to http."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from conveyor.common.errors import TransportError
from conveyor.common.transport.pulsar.admin import AdminClient
from tests.support.tls import tls_dir


async def _serve(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


@pytest.fixture
async def plain_target() -> AsyncIterator[tuple[int, list[str]]]:
    """The broker that owns the topic: answers, and records the auth header it got."""
    seen: list[str] = []

    async def subscriptions(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response(["conveyor"])

    app = web.Application()
    app.router.add_get("/admin/v2/persistent/t/n/q/subscriptions", subscriptions)
    runner, port = await _serve(app)
    yield port, seen
    await runner.cleanup()


def _redirecting(to: str) -> web.Application:
    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"{to}{request.path}")

    app = web.Application()
    app.router.add_get("/admin/v2/{tail:.*}", redirect)
    return app


async def test_a_redirect_to_the_owning_broker_is_followed(plain_target: tuple[int, list[str]]) -> None:
    port, seen = plain_target
    runner, first = await _serve(_redirecting(f"http://127.0.0.1:{port}"))
    client = AdminClient(f"http://127.0.0.1:{first}", timeout=5, headers={"Authorization": "Bearer t"})
    await client.start()
    try:
        assert await client.subscriptions("/persistent/t/n/q") == ["conveyor"]
    finally:
        await client.close()
        await runner.cleanup()
    assert seen == ["Bearer t"]


async def test_a_redirect_from_https_to_http_is_refused_before_anything_is_sent(
    plain_target: tuple[int, list[str]],
) -> None:
    port, seen = plain_target
    directory = tls_dir()
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    key = directory / "server.key"
    server_ssl.load_cert_chain(directory / "server.pem", key if key.exists() else None)
    runner, first = await _serve(_redirecting(f"http://127.0.0.1:{port}"), server_ssl)
    client_ssl = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    client = AdminClient(f"https://localhost:{first}", timeout=5, headers={"Authorization": "Bearer secret"},
                         ssl_context=client_ssl)
    await client.start()
    try:
        with pytest.raises(TransportError, match="from https to http: refused"):
            await client.subscriptions("/persistent/t/n/q")
    finally:
        await client.close()
        await runner.cleanup()
    assert seen == [], "the token never went out in clear"
