"""The ``conveyor`` subcommands, one module each; ``consumer.cli`` puts them together."""

__all__: list[str] = []
