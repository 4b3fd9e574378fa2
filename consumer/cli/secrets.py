"""Secrets on the command line: where they come from, the ``ps`` warning, and masking.

Any user on the host can read another process's arguments (``ps``, ``/proc/<pid>/cmdline``),
so a password in ``--broker`` or ``--idempotency-url`` leaks there however carefully we mask
our own output. The flags keep working, with a warning on stderr; the environment
(``CONVEYOR_BROKER_URL``) and files (``CONVEYOR_BROKER_URL_FILE``, mounted secrets) do not
have the problem. ``protect`` then masks every secret the command knows in its log lines and
error messages, through a ``Redactor`` kept in the click context (per invocation, no global).
"""

from __future__ import annotations

from typing import Any

import click
from click.core import ParameterSource

from conveyor.common.errors import ConfigurationError
from conveyor.common.logging import configure_logging
from conveyor.common.secrets import Redactor, mask_secrets, mask_url, secret_from_file
from conveyor.common.settings import Settings

__all__ = ["broker_from_environment", "protect", "redactor", "warn_if_credentials"]

_ALTERNATIVES = {
    "broker": "CONVEYOR_BROKER_URL or CONVEYOR_BROKER_URL_FILE",
    "idempotency_url": "CONVEYOR_IDEMPOTENCY_URL or CONVEYOR_IDEMPOTENCY_URL_FILE",
    "job_state_url": "CONVEYOR_JOB_STATE_URL or CONVEYOR_JOB_STATE_URL_FILE",
    "database_url": "CONVEYOR_OUTBOX_DATABASE_URL or CONVEYOR_OUTBOX_DATABASE_URL_FILE",
}


def warn_if_credentials(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Click callback: warn when a URL with a password or token was typed as a flag."""
    if isinstance(value, str) and ctx.get_parameter_source(param.name or "") == ParameterSource.COMMANDLINE:
        if mask_url(value) != value:
            flag = param.opts[0] if param.opts else param.name
            other = _ALTERNATIVES.get(param.name or "", "an environment variable or a *_FILE")
            click.echo(
                f"warning: {flag} carries a credential, which any user on this host can read in the process "
                f"list (ps); set {other} instead",
                err=True,
            )
    return value


def broker_from_environment(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback of ``--broker``: flag, else CONVEYOR_BROKER_URL, else its _FILE, else None.

    There is no default broker: the in-memory one loses every job when the command exits, so it
    is used only when asked for (``memory://``); ``support.require_broker`` turns None into a
    usage error."""
    warn_if_credentials(ctx, param, value)
    try:
        from_file = secret_from_file("CONVEYOR_BROKER_URL")
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    if value is not None:
        return value
    return from_file or None


def protect(settings: Settings, *flag_values: str | None) -> Redactor:
    """From here on, mask every secret this command knows in log lines and error messages."""
    ctx = click.get_current_context()
    redact = Redactor.from_settings(settings, *flag_values)
    root = ctx.find_root().params
    configure_logging(root.get("log_level", settings.log_level), root.get("log_format", settings.log_format),
                      redact=redact)
    ctx.ensure_object(dict)["redact"] = redact
    return redact


def redactor() -> Any:
    """The command's ``Redactor`` once ``protect`` ran; URL passwords only before that."""
    ctx = click.get_current_context(silent=True)
    found = ctx.find_object(dict) if ctx is not None else None
    return (found or {}).get("redact", mask_secrets)
