"""The ``conveyor`` command line: demo, worker, publish, dlq, payloads, status, jobs, outbox, console.

Every option also reads a ``CONVEYOR_*`` environment variable (see ``conveyor.common.settings``);
flags win. Broker URLs are masked whenever they are shown, and every secret a command knows
is masked in its logs and errors; a password typed as a flag gets a ``ps`` warning
(``conveyor.consumer.cli.secrets``). Each subcommand is a module of this package.
"""

from __future__ import annotations

import click
from click.core import ParameterSource

from conveyor.common.logging import configure_logging
from conveyor.common.settings import LOG_LEVELS, Settings
from conveyor.consumer.cli.console import console as console_command
from conveyor.consumer.cli.dlq import dlq
from conveyor.consumer.cli.jobs import jobs
from conveyor.consumer.cli.outbox import outbox
from conveyor.consumer.cli.payloads import payloads
from conveyor.consumer.cli.publish import publish
from conveyor.consumer.cli.status import status
from conveyor.consumer.cli.support import console, run
from conveyor.consumer.cli.worker import worker

__all__ = ["main"]

_DEFAULTS = Settings.model_fields  # the log options' defaults are the settings' (one place)


def _log_level(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """One of LOG_LEVELS, any case; anything else is a one-line usage error naming where it came from."""
    if value.upper() in LOG_LEVELS:
        return value.upper()
    from_env = ctx.get_parameter_source("log_level") == ParameterSource.ENVIRONMENT
    source = " (from CONVEYOR_LOG_LEVEL)" if from_env else ""
    raise click.BadParameter(f"{value!r}{source} is not one of {', '.join(LOG_LEVELS)}", ctx=ctx, param=param)


@click.group()
@click.option("--log-level", envvar="CONVEYOR_LOG_LEVEL", default=_DEFAULTS["log_level"].default, show_default=True,
              callback=_log_level, help=f"{', '.join(LOG_LEVELS)} [env CONVEYOR_LOG_LEVEL]")
@click.option("--log-format", envvar="CONVEYOR_LOG_FORMAT", type=click.Choice(["json", "text"]),
              default=_DEFAULTS["log_format"].default, show_default=True, help="[env CONVEYOR_LOG_FORMAT]")
def main(log_level: str, log_format: str) -> None:
    """Conveyor: reliable, schema-versioned background jobs."""
    configure_logging(log_level, log_format)


@main.command()
@click.option("--jobs", "jobs_count", default=300, show_default=True, help="How many jobs to publish")
@click.option("--console", "with_console", is_flag=True,
              help="Then keep the demo's broker and worker up and serve the operator console on 127.0.0.1")
@click.option("--console-port", default=8765, show_default=True, type=click.IntRange(0, 65535))
def demo(jobs_count: int, with_console: bool, console_port: int) -> None:
    """Run the whole job life cycle on the embedded broker (no server needed)."""
    import logging

    from conveyor.consumer.ops.demo import run_demo

    logging.getLogger().setLevel(logging.ERROR)  # the demo's tables tell the story
    keep_up = None
    if with_console:
        from conveyor.consumer.cli.console import demo_console

        keep_up = demo_console(console_port)
    run(run_demo(console, jobs_count=jobs_count, keep_up=keep_up), None)


for command in (worker, publish, dlq, payloads, status, jobs, outbox, console_command):
    main.add_command(command)


if __name__ == "__main__":
    main()
