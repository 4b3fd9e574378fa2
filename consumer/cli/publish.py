"""``conveyor publish JOB_TYPE --payload …``: one job, confirmed by the broker before it returns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import orjson

from conveyor.common.codec import strict_json_loads
from conveyor.consumer.cli import support

__all__ = ["publish"]


@click.command()
@click.argument("job_type")
@click.option("--payload", required=True, help="JSON object, or @file to read it from a file")
@support.broker_option
@click.option("--app", default=None, help="module[:attr] of a JobRegistry to validate against")
@click.option("--queue", default=None, help="Target queue [from --app, else conveyor.default]")
@click.option("--version", "schema_version", type=int, default=None, help="Schema version [latest]")
@click.option("--idempotency-key", default=None)
@click.option("--delay", type=float, default=0.0, help="Seconds before the job may run")
@click.option("--header", "headers", multiple=True, help="name=value, repeatable")
@support.payload_store_option
def publish(job_type: str, payload: str, broker: str | None, app: str | None, queue: str | None,
            schema_version: int | None, idempotency_key: str | None, delay: float, headers: tuple[str, ...],
            payload_store: str | None) -> None:
    """Publish one job and wait for the broker's confirm (large payloads go to the payload store)."""
    from conveyor.producer.producer import Producer

    settings = support.settings_from(**({"payload_store": payload_store} if payload_store else {}))
    url = support.require_broker(broker)
    store_options = {"payload_threshold": settings.payload_threshold_bytes}

    raw = Path(payload[1:]).read_bytes() if payload.startswith("@") else payload.encode()
    data = strict_json_loads(raw)
    if not isinstance(data, dict):
        raise click.ClickException("--payload must be a JSON object")
    header_map = dict(h.split("=", 1) for h in headers)

    async def go() -> None:
        transport = support.transport_for(url, settings)
        store = support.payload_store_for(settings)
        middlewares, tracer_provider = support.tracing(settings, "conveyor-publish")
        options: dict[str, Any] = {"payload_store": store, "middlewares": middlewares, **store_options}
        if app:
            producer = Producer.for_registry(transport, support.load_registry(app), **options)
        else:
            producer = Producer(transport, allow_unregistered=True, **options)
        try:
            async with producer:
                receipt = await producer.publish(
                    job_type, data, idempotency_key=idempotency_key, delay=delay, headers=header_map,
                    version=schema_version, queue=queue,
                )
        finally:
            if store is not None:
                await store.close()
            if tracer_provider is not None:
                tracer_provider.shutdown()
        click.echo(orjson.dumps({"job_id": receipt.job_id, "queue": receipt.queue, "confirmed": True}).decode())

    support.run(go(), settings)
