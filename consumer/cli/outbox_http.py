"""The outbox relay's /healthz, /readyz and /metrics (``conveyor outbox relay --http-port``).

A module of its own so that ``conveyor --help`` does not import the worker.
"""

from __future__ import annotations

from conveyor.consumer.http import Endpoints, Reply
from conveyor.producer.outbox.relay import OutboxRelay

__all__ = ["RelayHttp"]


class RelayHttp(Endpoints):
    """/healthz (the loop turns), /readyz (its last batch did not fail), /metrics."""

    port_setting = "--http-port"

    def __init__(self, relay: OutboxRelay, host: str, port: int) -> None:
        super().__init__(host, port)
        self._relay = relay

    async def _healthz(self) -> Reply:
        return Reply(200, b"ok")

    async def _readyz(self) -> Reply:
        failing = self._relay.failures
        return Reply.json({"ready": not failing, "failures": failing}, status=503 if failing else 200)

    async def _metrics(self) -> Reply:
        return Reply(200, self._relay.metrics.render())
