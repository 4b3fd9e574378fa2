"""The ``conveyor`` command line: demo, worker, publish, dlq, payloads, status, jobs, outbox, console.

Every option also reads a ``CONVEYOR_*`` environment variable (see ``conveyor.common.settings``);
flags win. Broker URLs are masked whenever they are shown, and every secret a command knows
is masked in its logs and errors; a password typed as a flag gets a ``ps`` warning
(``conveyor.consumer.cli.secrets``). Each subcommand is a module of this package.
"""

from __future__ import annotations

import importlib
from typing import Any

import click
from click.core import ParameterSource

from conveyor.common.logging import configure_logging
from conveyor.common.settings import LOG_LEVELS, Settings
from conveyor.consumer.cli.support import ArgvGroup, run

__all__ = ["main"]

_DEFAULTS = Settings.model_fields  # the log options' defaults are the settings' (one place)


# Each subcommand's module is imported when that command runs (or for --help): ``conveyor
# worker`` then never loads the listing commands' rich tables and progress bars (issue 18,
# worker RSS; tests/e2e/test_cli_lean_imports.py). name -> the module defining the command.
_SUBCOMMANDS = {
    "worker": "worker", "publish": "publish", "dlq": "dlq", "payloads": "payloads",
    "status": "status", "jobs": "jobs", "outbox": "outbox", "console": "console",
}


class _Root(ArgvGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *_SUBCOMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = _SUBCOMMANDS.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            command: Any = getattr(importlib.import_module(f"conveyor.consumer.cli.{module}"), cmd_name)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


def _log_level(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """One of LOG_LEVELS, any case; anything else is a one-line usage error naming where it came from."""
    if value.upper() in LOG_LEVELS:
        return value.upper()
    from_env = ctx.get_parameter_source("log_level") == ParameterSource.ENVIRONMENT
    source = " (from CONVEYOR_LOG_LEVEL)" if from_env else ""
    raise click.BadParameter(f"{value!r}{source} is not one of {', '.join(LOG_LEVELS)}", ctx=ctx, param=param)


@click.group(cls=_Root)
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

    from conveyor.consumer.cli.support import console
    from conveyor.consumer.ops.demo import run_demo

    logging.getLogger().setLevel(logging.ERROR)  # the demo's tables tell the story
    keep_up = None
    if with_console:
        from conveyor.consumer.cli.console import demo_console

        keep_up = demo_console(console_port)
    run(run_demo(console, jobs_count=jobs_count, keep_up=keep_up), None)


if __name__ == "__main__":
    main()
