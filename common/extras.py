"""Broker and store clients are optional extras; asking for one that is missing is one line.

``pip install conveyor`` runs on the in-memory broker; ``conveyor[rabbitmq]``, ``[pulsar]``,
``[postgres]`` and ``[s3]`` add their clients. Each factory calls :func:`require` before it
imports the module that needs the client, so a missing extra is a ``ConfigurationError`` naming
the extra to install, never an ``ImportError`` traceback from deep inside a transport.
"""

from __future__ import annotations

import importlib.util

from conveyor.common.errors import ConfigurationError

__all__ = ["EXTRAS", "require"]

# extra -> the top-level modules it installs that Conveyor imports
EXTRAS: dict[str, tuple[str, ...]] = {
    "rabbitmq": ("aio_pika", "aiormq"),
    "pulsar": ("pulsar", "h11"),
    "postgres": ("asyncpg",),
    "s3": ("aiobotocore", "botocore"),
    "console": ("jinja2", "jsonschema"),
}


def require(extra: str, feature: str) -> None:
    """Raise ``ConfigurationError`` unless every module of ``extra`` can be imported."""
    missing = [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigurationError(
            f"{feature} needs the {extra} extra ({', '.join(missing)} is not installed): "
            f"pip install 'conveyor[{extra}]'"
        )
