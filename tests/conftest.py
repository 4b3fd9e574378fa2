from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from tests.support.backends import Backend, backend_names, make_backend


@pytest.fixture(params=backend_names())
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
