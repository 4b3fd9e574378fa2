"""``conveyor worker MODULE[:ATTR]``: run a registry's handlers until SIGTERM/SIGINT, then drain."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import click

from conveyor.common.defaults import DEFAULT_CONCURRENCY, DEFAULT_GRACE_PERIOD, DEFAULT_HTTP_HOST, DEFAULT_HTTP_PORT
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.secrets import mask_url
from conveyor.common.settings import Settings
from conveyor.consumer.cli.secrets import redactor, warn_if_credentials
from conveyor.consumer.cli.support import (
    broker_option,
    console,
    job_state_option,
    job_state_store_for,
    load_registry,
    payload_store_for,
    payload_store_option,
    require_broker,
    run,
    settings_from,
    tracing,
    transport_for,
)

__all__ = ["worker"]


@click.command()
@click.argument("target")
@broker_option
@click.option("--concurrency", type=int, default=None,
              help=f"Jobs at once [env CONVEYOR_CONCURRENCY, {DEFAULT_CONCURRENCY}]")
@click.option("--prefetch", type=int, default=None, help="Unacked deliveries held [default: concurrency]")
@click.option("--grace-period", type=float, default=None,
              help=f"Seconds to finish jobs on SIGTERM [{DEFAULT_GRACE_PERIOD:g}]")
@click.option("--http-host", default=None, help=f"Health/metrics address [{DEFAULT_HTTP_HOST}]")
@click.option("--http-port", type=int, default=None, help=f"Health/metrics port, 0 to disable [{DEFAULT_HTTP_PORT}]")
@payload_store_option
@click.option("--idempotency-url", default=None, callback=warn_if_credentials,
              help="Processed-key store: sqlite:///path or postgresql://… [env CONVEYOR_IDEMPOTENCY_URL or "
                   "CONVEYOR_IDEMPOTENCY_URL_FILE; off]")
@job_state_option
def worker(target: str, broker: str | None, **overrides: Any) -> None:
    """Run the handlers registered in TARGET (module[:attr]) until SIGTERM/SIGINT."""
    settings = settings_from(**{k: v for k, v in overrides.items() if v is not None})
    url = require_broker(broker)
    registry = load_registry(target, "TARGET")
    from conveyor.common.job_state.run_info import code_version, config_hash

    # Before the loop: the git revision is a subprocess.
    run_info = (code_version(settings.code_version), config_hash(settings))
    run(_worker_main(registry, url, settings, run_info), settings)


async def _worker_main(registry: JobRegistry, broker: str, settings: Settings, run_info: tuple[str, str]) -> None:
    from dataclasses import replace

    from conveyor.consumer.http import HealthServer
    from conveyor.consumer.middleware.job_state import JobStateConfig
    from conveyor.consumer.worker import Worker, WorkerConfig

    config = replace(WorkerConfig.from_settings(settings), code_version=run_info[0], config_hash=run_info[1])
    middlewares, tracer_provider = tracing(settings, "conveyor-worker")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    transport = transport_for(broker, settings)
    store = payload_store_for(settings)
    keys = None
    if settings.idempotency_url is not None:
        from conveyor.common.idempotency import store_from_url

        keys = store_from_url(settings.idempotency_url.get_secret_value())
    states = job_state_store_for(settings)
    lease = settings.job_state_lease
    state_config = JobStateConfig(lease=lease, heartbeat=lease / 6, reconcile_every=lease / 2)
    async with transport:
        async with Worker(transport, registry, config=config, payload_store=store, middlewares=middlewares,
                          idempotency=keys, job_state=states, job_state_config=state_config,
                          redact=redactor()) as running:
            http = HealthServer(running, settings.http_host, settings.http_port) if settings.http_port else None
            if http:
                await http.start()
            console.print(
                f"worker {config.worker_id} consuming {', '.join(registry.queues())} on {mask_url(broker)}"
                + (f"; http://{settings.http_host}:{http.port}/metrics" if http else ""),
                highlight=False,
            )
            await stop.wait()
            console.print("draining…")
            await running.drain()
            if http:
                await http.stop()
    if store is not None:
        await store.close()
    if tracer_provider is not None:
        tracer_provider.shutdown()  # flush the last spans
    console.print("stopped")
