"""What every ``conveyor`` command shares: running a command's coroutine with its secrets masked,
typed settings, loading a job registry, the common options, and building transports, stores
and tracing from settings.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import math
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from conveyor.common.errors import ConveyorError
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.logging import PULSAR_NATIVE_LOGGER
from conveyor.common.settings import Settings
from conveyor.common.transport.base import Transport
from conveyor.common.transport.factory import transport_from_url
from conveyor.consumer.cli.secrets import (
    broker_from_environment,
    protect,
    redactor,
    warn_if_credentials,
)

__all__ = [
    "broker_option",
    "console",
    "finite",
    "job_state_option",
    "job_state_store_for",
    "load_registry",
    "payload_store_for",
    "payload_store_option",
    "queue_names",
    "queue_option",
    "require_broker",
    "run",
    "settings_from",
    "tracing",
    "transport_for",
]

if TYPE_CHECKING:
    from rich.console import Console

    console: Console

T = TypeVar("T")


def __getattr__(name: str) -> Any:
    # ``console``: rich's Console, built when a command first imports it. rich is sizeable
    # resident once it has printed, and ``conveyor worker`` prints only plain lines (with
    # click), so its processes never load it (issue 18, worker RSS). The listing commands'
    # tables and the demo use it as before.
    if name == "console":
        from rich.console import Console

        globals()["console"] = value = Console()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_MISSING = object()


_ARGV = "conveyor.argv"


class ArgvGroup(click.Group):
    """The root group: it keeps the arguments it was given, so that ``worker --processes N``
    starts its worker processes with those (``main([...])`` called from code), not sys.argv."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        given = list(args)  # parsing consumes the list
        ctx = super().make_context(info_name, args, parent, **extra)
        ctx.meta[_ARGV] = given
        return ctx


def command_line() -> list[str]:
    """The arguments of this ``conveyor`` invocation, after the program name."""
    return list(click.get_current_context().meta.get(_ARGV, sys.argv[1:]))


def run(coro: Coroutine[Any, Any, T], settings: Settings | None, *, serving: bool = False) -> T:
    """Run a command's coroutine; first, mask every secret it knows: its ``settings`` (from the
    environment and secret files, read once by the command) and its flags. ``None``: a command
    that touches no secrets (the demo).

    ``serving``: a long-running command (worker, console, relay), whose log is its record. A
    one-shot command answers in one line: the clients' own logs of the failed connect (aiormq's,
    and the Pulsar client's native lines: the same failure, many more lines on stderr) are muted
    while it runs."""
    client_logs = [logging.getLogger("aiormq.connection"), logging.getLogger(PULSAR_NATIVE_LOGGER)]
    levels = [client_log.level for client_log in client_logs]
    if not serving:
        for client_log in client_logs:
            client_log.setLevel(logging.CRITICAL + 1)
    try:
        if settings is not None:
            params = click.get_current_context().params
            protect(settings, params.get("broker"), params.get("idempotency_url"), params.get("database_url"),
                    params.get("job_state_url"))
        return asyncio.run(coro)
    except ConveyorError as exc:  # one line: the error's type (and reason code) and message
        raise click.ClickException(redactor()(f"{type(exc).__name__} ({exc.reason}): {exc}")) from None
    finally:
        for client_log, level in zip(client_logs, levels, strict=True):
            client_log.setLevel(level)


def settings_from(**overrides: Any) -> Settings:
    """Settings from the environment and flags; a bad value is a one-line usage error naming
    the setting, never a traceback and never the value (it may be a secret)."""
    from pydantic import ValidationError

    def source(name: str) -> str:
        # A flag's value is named as the flag: "--concurrency 0" was reported as
        # CONVEYOR_CONCURRENCY, a variable the user had not set (or had set right).
        return f"--{name.replace('_', '-')}" if name in overrides else f"CONVEYOR_{name.upper()}"

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{source('_'.join(str(p) for p in error['loc']))}: {error['msg']}" if error["loc"]
            else error["msg"]  # a rule between settings: its message names them
            for error in exc.errors()
        )
        # The reason code every Conveyor error line carries; still a usage error (exit 2).
        raise click.UsageError(f"ConfigurationError (invalid_configuration): {problems}") from None


def load_registry(target: str, param_hint: str) -> JobRegistry:
    """``package.module[:attr]``; attr defaults to ``jobs`` and may be a factory function.

    A module or attribute that is not there is a one-line usage error naming ``param_hint``
    (the argument or option it came from); a module that fails to import something of its own
    is a one-line error naming what; any other error in the user's module keeps its traceback.
    """
    module_name, _, attr = target.partition(":")
    attr = attr or "jobs"

    def bad(reason: str) -> click.BadParameter:
        return click.BadParameter(reason, ctx=click.get_current_context(silent=True), param_hint=param_hint)

    sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(f"{exc.name}.")):
            raise bad(f"no module named {exc.name!r} (from {target!r}; is it on PYTHONPATH?)") from None
        raise click.ClickException(f"importing {module_name} failed: {exc}") from None
    except (ValueError, TypeError):  # "", ".relative", "a..b"
        raise bad(f"{target!r} is not module[:attr]") from None
    value: Any = getattr(module, attr, _MISSING)
    if value is _MISSING:
        raise bad(f"module {module_name!r} has no attribute {attr!r}")
    # A factory, but not a class: one was called too (a pydantic model's ValidationError
    # traceback; JobRegistry itself, an empty registry).
    if inspect.isclass(value):
        raise bad(f"{target!r} is a class, not a JobRegistry (or a function returning one)")
    if callable(value) and not isinstance(value, JobRegistry):
        value = value()
    if not isinstance(value, JobRegistry):
        raise bad(f"{target!r} is a {type(value).__name__}, not a JobRegistry (or a function returning one)")
    return value


def finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A click callback: FloatRange lets NaN through (every comparison with it is false)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value!r} is not a finite number", ctx=ctx, param=param)
    return value


broker_option = click.option(
    "--broker", envvar="CONVEYOR_BROKER_URL", default=None, callback=broker_from_environment,
    help="Broker URL: amqp://…, pulsar://…, or memory:// (in-process: gone when the command exits) "
         "[required: this or env CONVEYOR_BROKER_URL or CONVEYOR_BROKER_URL_FILE; a password here shows in ps]",
)
def queue_names(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A click callback for ``--queue`` (one, repeated or optional): an empty name is a mistake,
    not a queue to look for (a table row with an error, a search for the DLQ ``.dlq``) nor the
    default queue (``publish`` sent jobs there unasked)."""
    for name in (value,) if isinstance(value, str) else value or ():
        if not name.strip():
            raise click.BadParameter("must name a queue, not be empty (leave it out for the default)",
                                     ctx=ctx, param=param)
    return value


queue_option = click.option("--queue", default=DEFAULT_QUEUE, show_default=True, callback=queue_names,
                            help="Work queue name")
payload_store_option = click.option(
    "--payload-store", default=None,
    help="Claim-check store: file:///path, s3://bucket/prefix [env CONVEYOR_PAYLOAD_STORE; unset: off]",
)


job_state_option = click.option(
    "--job-state-url", default=None, callback=warn_if_credentials,
    help="Job-state store: memory://, sqlite:///path or postgresql://… [env CONVEYOR_JOB_STATE_URL or "
         "CONVEYOR_JOB_STATE_URL_FILE; off]",
)


def job_state_store_for(settings: Settings) -> Any:
    """The job-state store CONVEYOR_JOB_STATE_URL names, not opened; None when unset (or empty)."""
    if settings.job_state_url is None or not settings.job_state_url.get_secret_value().strip():
        return None
    from conveyor.common.job_state import job_state_store_from_url

    try:
        return job_state_store_from_url(settings.job_state_url.get_secret_value())
    except ConveyorError as exc:  # publish and jobs build it before run(): one line, not a traceback
        raise click.UsageError(redactor()(f"invalid configuration: CONVEYOR_JOB_STATE_URL (or --job-state-url): "
                                          f"{exc}")) from None


def tracing(settings: Settings, service: str) -> tuple[list[Any], Any]:
    """Middlewares and tracer provider for CONVEYOR_TRACING=otlp|console (needs conveyor[otel])."""
    if settings.tracing == "off":
        return [], None
    from conveyor.common.tracing import TracingMiddleware, configure_tracing

    return [TracingMiddleware()], configure_tracing(service, settings.tracing)


def require_broker(broker: str | None) -> str:
    """The broker a command was given; none is a one-line usage error. Never a default: the
    in-memory broker would confirm a job and lose it when the command exits."""
    if not broker:
        raise click.UsageError(
            "no broker: pass --broker URL or set CONVEYOR_BROKER_URL (or CONVEYOR_BROKER_URL_FILE); "
            "memory:// for the in-process broker, which keeps nothing after the command exits",
            ctx=click.get_current_context(silent=True),
        )
    return broker


def transport_for(broker: str | None, settings: Settings) -> Transport:
    """The broker's transport; amqps:// and pulsar+ssl:// get the CONVEYOR_TLS_* settings."""
    return transport_from_url(require_broker(broker), tls=settings.tls())


def payload_store_for(settings: Settings) -> Any:
    """The claim-check store the settings name, not opened; None when there is none. A
    location that does not parse is a usage error naming the setting: it was a ConfigurationError
    (exit 1) that named neither CONVEYOR_PAYLOAD_STORE nor --payload-store."""
    from conveyor.common.payload_store.factory import store_from_settings

    try:
        return store_from_settings(settings)
    except ConveyorError as exc:
        raise setting_error(exc, "the payload store (CONVEYOR_PAYLOAD_STORE or --payload-store, CONVEYOR_S3_*)",
                            ctx=click.get_current_context(silent=True)) from None


def idempotency_store_for(settings: Settings) -> Any:
    """The processed-key store, not opened; None when unset. A URL that does not parse is a
    usage error naming the setting (it was exit 1 naming neither the variable nor the flag)."""
    if settings.idempotency_url is None:
        return None
    from conveyor.common.idempotency import store_from_url

    try:
        return store_from_url(settings.idempotency_url.get_secret_value())
    except ConveyorError as exc:
        raise setting_error(exc, "CONVEYOR_IDEMPOTENCY_URL (or --idempotency-url)") from None


def setting_error(exc: ConveyorError, setting: str, ctx: click.Context | None = None) -> click.UsageError:
    """A store location that does not parse, as a usage error (exit 2): its error's type and
    reason code, the setting that gave it, and the message, masked."""
    return click.UsageError(redactor()(f"{type(exc).__name__} ({exc.reason}): {setting}: {exc}"), ctx=ctx)
