"""``conveyor publish JOB_TYPE --payload …``: one job, confirmed by the broker before it returns."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from conveyor.common.codec import strict_json_loads
from conveyor.common.errors import RejectedMessage
from conveyor.consumer.cli import support

if TYPE_CHECKING:
    from conveyor.common.settings import Settings

__all__ = ["publish"]


@click.command()
@click.argument("job_type")
@click.option("--payload", required=True, help="JSON object, or @file to read it from a file")
@support.broker_option
@click.option("--app", default=None, help="module[:attr] of a JobRegistry to validate against")
@click.option("--queue", default=None, callback=support.queue_names,
              help="Target queue [from --app, else conveyor.default]")
@click.option("--version", "schema_version", type=int, default=None, help="Schema version [latest]")
@click.option("--idempotency-key", default=None)
@click.option("--delay", type=float, default=0.0, help="Seconds before the job may run (at most 30 days)")
@click.option("--header", "headers", multiple=True, help="name=value, repeatable")
@support.payload_store_option
@support.job_state_option
def publish(job_type: str, payload: str, broker: str | None, app: str | None, queue: str | None,
            schema_version: int | None, idempotency_key: str | None, delay: float, headers: tuple[str, ...],
            payload_store: str | None, job_state_url: str | None) -> None:
    """Publish one job and wait for the broker's confirm (large payloads go to the payload store)."""
    from conveyor.producer.producer import Producer

    overrides = {"payload_store": payload_store, "job_state_url": job_state_url}
    settings = support.settings_from(**{k: v for k, v in overrides.items() if v})
    url = support.require_broker(broker)
    # CONVEYOR_MAX_MESSAGE_BYTES is the workers' limit of a job as sent: the producer's too (it
    # refused past the 1 MiB default whatever the setting said).
    store_options = {"payload_threshold": settings.payload_threshold_bytes,
                     "max_message_bytes": settings.max_message_bytes}

    version = None
    if support.job_state_store_for(settings) is not None:  # before the loop: the git revision is a subprocess
        from conveyor.common.job_state.run_info import code_version

        version = code_version(settings.code_version)
    data = _payload(payload, _largest_payload(settings))
    header_map = _headers(headers)
    registry = support.load_registry(app, "--app") if app else None

    async def go() -> None:
        transport = support.transport_for(url, settings)
        store = support.payload_store_for(settings)
        states = support.job_state_store_for(settings)
        middlewares, tracer_provider = support.tracing(settings, "conveyor-publish")
        options: dict[str, Any] = {"payload_store": store, "middlewares": middlewares, **store_options}
        if states is not None:
            options.update(job_state=states, code_version=version)
        if registry is not None:
            producer = Producer.for_registry(transport, registry, **options)
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
            if states is not None:
                await states.close()
            if tracer_provider is not None:
                tracer_provider.shutdown()
        click.echo(orjson.dumps({"job_id": receipt.job_id, "queue": receipt.queue, "confirmed": True}).decode())

    support.run(go(), settings)


def _bad(reason: str, option: str) -> click.BadParameter:
    return click.BadParameter(reason, ctx=click.get_current_context(silent=True), param_hint=option)


def _largest_payload(settings: Settings) -> tuple[int, str]:
    """The most bytes a payload may have here, and the setting that says so."""
    if settings.payload_store:
        return max(settings.payload_max_bytes, settings.max_message_bytes), "CONVEYOR_PAYLOAD_MAX_BYTES"
    return settings.max_message_bytes, "CONVEYOR_MAX_MESSAGE_BYTES"


def _payload(payload: str, largest: tuple[int, str]) -> dict[str, Any]:
    """``--payload``: a JSON object, inline or ``@file``; JSON the wire would reject (NaN,
    duplicate keys, huge numbers) is a usage error with its reason code. A file is read no
    further than the largest payload that could be sent: ``@/dev/zero`` is an error, not a
    process that eats the machine's memory."""
    limit, setting = largest
    if payload.startswith("@"):
        try:
            with Path(payload[1:]).open("rb") as file:
                raw = file.read(limit + 1)
        except OSError as exc:
            raise _bad(f"cannot read {payload[1:]!r}: {exc.strerror or exc}", "--payload") from None
        if len(raw) > limit:
            raise _bad(f"oversize: {payload[1:]!r} holds more than the {limit:,} bytes a payload may have "
                       f"({setting})", "--payload")
    else:  # the bytes the shell gave, as a file's: not UTF-8 is the codec's "malformed", not a traceback
        raw = payload.encode("utf-8", "surrogateescape")
    try:
        # The largest payload, not the parser's 1 MiB default: a payload for the store (up to
        # CONVEYOR_PAYLOAD_MAX_BYTES) was refused as oversize before it could be uploaded.
        data = strict_json_loads(raw, max_bytes=limit)
    except RejectedMessage as exc:
        raise _bad(f"{exc.reason}: {exc}", "--payload") from None
    if not isinstance(data, dict):
        raise _bad("must be a JSON object", "--payload")
    return data


def _headers(headers: tuple[str, ...]) -> dict[str, str]:
    pairs = {}
    for header in headers:
        name, sep, value = header.partition("=")
        if not sep or not name:
            raise _bad(f"{header!r} is not name=value", "--header")
        pairs[name] = value
    return pairs
