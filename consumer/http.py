"""Health and metrics over HTTP: /healthz (alive), /readyz (consuming), /metrics."""

from __future__ import annotations

from aiohttp import web

from conveyor.common.errors import ConfigurationError
from conveyor.consumer.worker import Worker

__all__ = ["Endpoints", "HealthServer"]


class Endpoints:
    """/healthz, /readyz and /metrics on one aiohttp site; subclasses answer them.

    Bound to 127.0.0.1 unless configured otherwise: metrics are not for the internet."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9464) -> None:
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:  # a port in use is a setting to change: one line, not a traceback
            await self.stop()
            raise ConfigurationError(
                f"cannot serve /healthz, /readyz, /metrics on {self._host}:{self._port} ({exc.strerror}); "
                "choose another --http-port (CONVEYOR_HTTP_PORT), or 0 to turn them off"
            ) from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _: web.Request) -> web.Response:
        raise NotImplementedError

    async def _readyz(self, _: web.Request) -> web.Response:
        raise NotImplementedError

    async def _metrics(self, _: web.Request) -> web.Response:
        raise NotImplementedError


class HealthServer(Endpoints):
    def __init__(self, worker: Worker, host: str = "127.0.0.1", port: int = 9464) -> None:
        super().__init__(host, port)
        self._worker = worker

    async def _healthz(self, _: web.Request) -> web.Response:
        # Answering at all proves the event loop is not stuck.
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        ready = self._worker.ready
        body = {"ready": ready, "in_flight": self._worker.in_flight}
        return web.json_response(body, status=200 if ready else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        self._worker.metrics.consumers_attached.set(self._worker.attached_queues)
        return web.Response(body=self._worker.metrics.render(), content_type="text/plain", charset="utf-8")
