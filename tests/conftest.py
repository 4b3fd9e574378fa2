from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass

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


@dataclass(frozen=True)
class RunLimits:
    """Under CI a broken run ends early and says why: the CI's own limit kills pytest before it
    prints a single failure, and a run that cannot land is worth nothing after its first
    failures. Outside CI a run goes to the end unless these are set."""

    max_failures: int | None
    budget: float | None
    started: float


_RUN_LIMITS = pytest.StashKey[RunLimits]()


def run_limits(environ: dict[str, str] | os._Environ[str], now: float) -> RunLimits:
    under_ci = environ.get("CI") == "true"
    failures = environ.get("CONVEYOR_TEST_MAX_FAILURES") or ("25" if under_ci else "")
    budget = environ.get("CONVEYOR_TEST_BUDGET") or ("4800" if under_ci else "")
    try:
        return RunLimits(int(failures) if failures else None, float(budget) if budget else None, now)
    except ValueError as exc:
        raise pytest.UsageError(f"CONVEYOR_TEST_MAX_FAILURES / CONVEYOR_TEST_BUDGET: not a number ({exc})") from None


def stop_reason(limits: RunLimits, failed: int, now: float) -> str | None:
    if limits.max_failures is not None and failed >= limits.max_failures:
        return f"{failed} tests failed (CONVEYOR_TEST_MAX_FAILURES={limits.max_failures}); the rest was not run"
    if limits.budget is not None and now - limits.started > limits.budget:
        return (f"the run took over {limits.budget:.0f} s (CONVEYOR_TEST_BUDGET); the rest was not run "
                "(see the machine line and the slowest tests)")
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RUN_LIMITS] = run_limits(os.environ, time.monotonic())
    # The workers and CLI commands the tests start keep crash journals and job-state files in
    # the state directory. Its default (~/.local/state/conveyor) is the developer's own and
    # outlives the run: a run killed half way left journals there for the next run's workers
    # to claim. Each run gets its own, removed at the end.
    state = tempfile.mkdtemp(prefix="conveyor-test-state-")
    config.add_cleanup(lambda: shutil.rmtree(state, ignore_errors=True))
    os.environ["XDG_STATE_HOME"] = state


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    yield
    reason = stop_reason(item.config.stash[_RUN_LIMITS], item.session.testsfailed, time.monotonic())
    if reason is not None and not item.session.shouldstop:
        item.session.shouldstop = reason


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
