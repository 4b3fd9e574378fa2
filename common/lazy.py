"""Package ``__init__`` exports imported on first use, so a package's names cost nothing until asked for.

A worker reaches ``conveyor.common.job_state.base`` or ``conveyor.common.payload_store.base`` for
one type each; with eager ``__init__`` imports that also loaded every store driver module, the
SQL layer and the factories (issue 18, worker RSS). A package lists its exports by module and
assigns ``__getattr__ = lazy_exports(__name__, {...})``; its ``TYPE_CHECKING`` block keeps the
names visible to type checkers, and ``from package import name`` works as before.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, tuple[str, ...]]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: ``exports`` maps a (relative) module to its names."""
    where = {name: module for module, names in exports.items() for name in names}
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> object:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value  # later lookups skip this function
        return value

    return __getattr__
