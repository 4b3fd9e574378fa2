"""Every public module declares ``__all__`` and every name in it exists."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

PACKAGES = ["common", "schemas", "producer", "consumer"]


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}."):
            if info.name.endswith(("rabbitmq", "pulsar")):
                continue  # import their broker clients lazily; covered by their own tests
            names.append(info.name)
    return names


@pytest.mark.parametrize("name", _modules())
def test_module_declares_its_public_surface(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if name.endswith(("__main__", "cli")) or name in PACKAGES and exported is None:
        return
    assert exported is not None, f"{name} has no __all__"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing objects: {missing}"
