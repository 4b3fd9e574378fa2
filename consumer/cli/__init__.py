"""The ``conveyor`` command: the group and ``demo`` in ``app``, one module per subcommand."""

from conveyor.consumer.cli.app import main

__all__ = ["main"]
