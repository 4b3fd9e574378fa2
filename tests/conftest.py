from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from tests.support.backends import Backend, backend_names, left_out, make_backend


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Checked here, when a test that uses a backend is collected: an empty, unknown or (under
    # CI) partial CONVEYOR_TEST_BACKENDS is a usage error, never a suite that passes unrun.
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", backend_names(), indirect=True)


def pytest_report_header(config: pytest.Config) -> str | None:
    try:
        names = backend_names()
    except pytest.UsageError:
        return None  # reported when the suites are collected
    missing = left_out(names)
    return f"conformance backends: {','.join(names)}" + (f" (left out: {', '.join(missing)})" if missing else "")


@pytest.fixture
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    chosen = make_backend(request.param)
    try:
        yield chosen
    finally:
        await chosen.close_all()


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll (real brokers have no test hook to await); fail with a clear message."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
