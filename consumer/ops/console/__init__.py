"""``conveyor console``: the operator console in the browser — queues, rates, breakers, dead letters.

Server-rendered HTML (aiohttp + Jinja2) with a little plain JavaScript on top; every action is
an existing operation (``consumer.ops.dead_letters``, ``consumer.ops.status``), never a second
implementation. Modules: ``config`` (what it is started with; where it may listen),
``security`` (auth, CSRF, read-only, headers, masking), ``history`` (samples and rates),
``chart`` (SVG), ``schema_catalog`` (JSON Schemas for edit-and-replay), ``render``,
``views_overview``, ``views_dead_letters``, ``app``.
"""

from __future__ import annotations

from conveyor.consumer.ops.console.app import build_app, serve
from conveyor.consumer.ops.console.config import ConsoleAuth, ConsoleConfig, ConsoleRefused, check_bind, load_auth
from conveyor.consumer.ops.console.history import OverviewHistory
from conveyor.consumer.ops.console.schema_catalog import SchemaCatalog
from conveyor.consumer.ops.console.state import ConsoleState

__all__ = [
    "ConsoleAuth",
    "ConsoleConfig",
    "ConsoleRefused",
    "ConsoleState",
    "OverviewHistory",
    "SchemaCatalog",
    "build_app",
    "check_bind",
    "load_auth",
    "serve",
]
