"""``conveyor worker MODULE[:ATTR]``: run a registry's handlers until SIGTERM/SIGINT/SIGHUP, then drain.

``--processes N`` (N > 1, or ``auto``: one per core) runs N such workers under a supervisor
(``conveyor.consumer.supervisor``); each is this same command, marked as a child.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from conveyor.common.defaults import DEFAULT_CONCURRENCY, DEFAULT_GRACE_PERIOD, DEFAULT_HTTP_HOST, DEFAULT_HTTP_PORT
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.secrets import mask_url
from conveyor.common.settings import Settings
from conveyor.consumer.cli.secrets import redactor, warn_if_credentials
from conveyor.consumer.cli.support import (
    broker_option,
    command_line,
    idempotency_store_for,
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

if TYPE_CHECKING:
    from conveyor.consumer.supervisor import RestartPolicy

__all__ = ["Processes", "restart_policy", "worker"]


# Each worker process is a whole interpreter with its own broker connections: more than this
# is a typo, and a count like 10**20 hung the supervisor building its slots (memory growing).
MAX_PROCESSES = 1024


class Processes(click.ParamType[int, Any]):
    """A whole number from 1 to ``MAX_PROCESSES``, or ``auto``: ``os.cpu_count()``."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_PROCESSES:
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return os.cpu_count() or 1
        if not text.lstrip("-").isdigit():
            self.fail(f"{value!r} is not a number of processes or 'auto'{_source(param, ctx)}", param, ctx)
        if not 1 <= int(text) <= MAX_PROCESSES:
            self.fail(f"{value!r}: from 1 to {MAX_PROCESSES} worker processes (or 'auto': one per core)"
                      f"{_source(param, ctx)}", param, ctx)
        return int(text)


def _source(param: click.Parameter | None, ctx: click.Context | None) -> str:
    """Where a bad value came from when it was the environment: click names only the flag."""
    if param is None or ctx is None or param.name is None:
        return ""
    if ctx.get_parameter_source(param.name) is click.core.ParameterSource.ENVIRONMENT:
        return f" (from {param.envvar})"
    return ""


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
@click.option("--processes", type=Processes(), default=1, envvar="CONVEYOR_PROCESSES",
              help="Worker processes under one supervisor; auto: one per core [env CONVEYOR_PROCESSES, 1]")
@payload_store_option
@click.option("--idempotency-url", default=None, callback=warn_if_credentials,
              help="Processed-key store: sqlite:///path or postgresql://… [env CONVEYOR_IDEMPOTENCY_URL or "
                   "CONVEYOR_IDEMPOTENCY_URL_FILE; off]")
@job_state_option
def worker(target: str, broker: str | None, processes: int, **overrides: Any) -> None:
    """Run the handlers registered in TARGET (module[:attr]) until SIGTERM/SIGINT/SIGHUP."""
    from conveyor.consumer.supervisor import child_index

    child = child_index()
    if child is not None:
        overrides["http_port"] = 0  # the supervisor serves the endpoints for all its workers
    settings = settings_from(**{k: v for k, v in overrides.items() if v is not None})
    url = require_broker(broker)
    registry = load_registry(target, "TARGET")
    if not registry.specs():
        # It would consume nothing and report ready for good while its queues fill: the
        # modules whose decorators register the jobs were never imported.
        raise click.BadParameter(f"{target!r} has no jobs registered (are the modules that register them "
                                 "imported by it?)", param_hint="TARGET")
    if processes > 1 and child is None:
        if url.startswith("memory:"):
            raise click.UsageError("--processes needs a real broker: memory:// lives inside one process")
        _supervise(processes, settings)
        return
    from conveyor.common.job_state.run_info import code_version, config_hash

    # Before the loop: the git revision is a subprocess.
    run_info = (code_version(settings.code_version), config_hash(settings))
    run(_worker_main(registry, url, settings, run_info), settings, serving=True)


def restart_policy(settings: Settings) -> RestartPolicy:
    """The default policy, with room for the crash guard: a job's crash count may reach
    crash_limit before it is dead-lettered, so the supervisor allows that many early deaths
    and two more before it calls it a crash loop."""
    from conveyor.consumer.supervisor import RestartPolicy

    return RestartPolicy(max_failures=max(RestartPolicy.max_failures, settings.crash_limit + 2))


def _supervise(processes: int, settings: Settings) -> None:
    """Run ``processes`` copies of this very command under a supervisor; exit as it says."""
    from conveyor.consumer.supervisor import Supervisor

    supervisor = Supervisor(
        [sys.executable, "-m", "conveyor", *command_line()], processes, grace_period=settings.grace_period,
        http_host=settings.http_host, http_port=settings.http_port, policy=restart_policy(settings),
        announce=click.echo,
    )
    code = run(supervisor.run(), settings, serving=True)
    if supervisor.error is not None:
        raise click.ClickException(supervisor.error)
    click.echo("stopped")
    if code:
        sys.exit(code)


async def _worker_main(registry: JobRegistry, broker: str, settings: Settings, run_info: tuple[str, str]) -> None:
    from dataclasses import replace

    from conveyor.consumer.http import HealthServer
    from conveyor.consumer.supervisor import STOP_SIGNALS, Beacon
    from conveyor.consumer.worker import Worker, WorkerConfig, freeze_startup_heap

    config = replace(WorkerConfig.from_settings(settings), code_version=run_info[0], config_hash=run_info[1])
    middlewares, tracer_provider = tracing(settings, "conveyor-worker")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    transport = transport_for(broker, settings)
    store = payload_store_for(settings)
    keys = idempotency_store_for(settings)
    states = job_state_store_for(settings)
    state_config = None
    if states is not None:  # the job-state middleware's modules load only when a store is configured
        from conveyor.consumer.middleware.job_state import JobStateConfig

        lease = settings.job_state_lease
        state_config = JobStateConfig(lease=lease, heartbeat=lease / 6, reconcile_every=lease / 2)
    worker = Worker(transport, registry, config=config, payload_store=store, middlewares=middlewares,
                    idempotency=keys, job_state=states, job_state_config=state_config, redact=redactor())
    # Listen before consuming: a port in use is a one-line error before any job is taken.
    http = HealthServer(worker, settings.http_host, settings.http_port) if settings.http_port else None
    if http:
        await http.start()
    freeze_startup_heap()  # everything above lives as long as the process
    try:
        async with transport, worker as running:
            beacon = Beacon.from_environment(lambda: (running.ready, running.in_flight),
                                             before=lambda: _refresh(running), orphaned=stop.set)
            if beacon:
                beacon.start()
            click.echo(
                f"worker {config.worker_id} consuming {', '.join(registry.queues())} on {mask_url(broker)}"
                + (f"; http://{settings.http_host}:{http.port}/metrics" if http else ""),
            )
            await stop.wait()
            click.echo("draining…")
            await running.drain()
            if beacon:
                await beacon.stop()
    finally:
        if http:
            await http.stop()
    if store is not None:
        await store.close()
    if tracer_provider is not None:
        tracer_provider.shutdown()  # flush the last spans
    click.echo("stopped")
    if abandoned := worker.threads.running():
        _exit_without_joining(abandoned)


def _exit_without_joining(threads: int) -> None:
    """End the process now: sync handlers still run past the grace period, their messages
    given back to the broker. A normal exit joins their threads, so each handler ran to its
    end (its side effects) while its redelivery ran on another worker; the drain is done and
    the crash journal closed, so nothing else is left to finish."""
    log = logging.getLogger("conveyor.consumer.worker")
    log.warning("sync handlers still running past the grace period: their jobs went back to the broker; "
                "exiting without waiting for their threads", extra={"threads": threads})
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _refresh(running: Any) -> None:
    """Copy the scrape-time values into the multiprocess files the supervisor serves."""
    running.metrics.consumers_attached.set(running.attached_queues)
    running.metrics.refresh()
