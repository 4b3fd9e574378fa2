"""Fault-suite fixtures: a fresh queue, effects table and work directory per scenario, on each broker.

``CONVEYOR_FAULT_ROUNDS`` runs every scenario that many times in one session (scripts/test
sets 2 under CI): a scenario that passes only sometimes is a bug, and repeating it is how
CI finds out. The figures of every run are printed at the end of the session.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conveyor.common.transport.factory import transport_from_url
from tests.faults.harness import FaultRun
from tests.faults.ledger import Figures, Ledger
from tests.integration.conftest import amqp_url, pulsar_url  # noqa: F401 - shared fixtures

_FIGURES: list[Figures] = []


def _rounds() -> int:
    return max(1, int(os.environ.get("CONVEYOR_FAULT_ROUNDS", "1")))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A module with ONE_ROUND = True runs once per session (the cluster scenarios: CI time).
    if "fault_round" in metafunc.fixturenames and not getattr(metafunc.module, "ONE_ROUND", False):
        metafunc.parametrize("fault_round", range(1, _rounds() + 1), ids=lambda n: f"round{n}")


@pytest.fixture(scope="session")
def database_url() -> str:
    url = os.environ.get("CONVEYOR_DATABASE_URL", "").strip()
    if not url:
        pytest.fail("CONVEYOR_DATABASE_URL is not set: the fault suite records effects in a real PostgreSQL "
                    "(scripts/services/postgres.sh up)", pytrace=False)
    return url


@pytest.fixture
def broker_url(request: pytest.FixtureRequest) -> str:
    """The URL of the broker named by the test's ``broker`` parameter (a missing server fails)."""
    name = request.node.callspec.params["broker"]
    return request.getfixturevalue({"rabbitmq": "amqp_url", "pulsar": "pulsar_url"}[name])


@pytest.fixture
async def fault_run(request: pytest.FixtureRequest, broker: str, broker_url: str, database_url: str,
                    tmp_path: Path, fault_round: int,
                    monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FaultRun]:
    token = uuid.uuid4().hex[:10]
    scenario = request.node.originalname.removeprefix("test_")
    # The scenario's job-state store: a schema of its own, selected by the URL's search_path
    # (asyncpg passes unknown URL parameters as server settings), so no worker setting changes.
    state_schema = f"fault_states_{token}"
    separator = "&" if "?" in database_url else "?"
    ledger = Ledger(broker_url=broker_url, queue=f"faults.{scenario[:30]}.{token}", database_url=database_url,
                    effects_table=f"fault_effects_{token}", executions=tmp_path / "executions.txt",
                    job_state_url=f"{database_url}{separator}search_path={state_schema}")
    await ledger.create_effects_table(state_schema)
    monkeypatch.setenv("FAULT_QUEUE", ledger.queue)  # app.jobs() in this process (the producer) routes the same way
    monkeypatch.setenv("FAULT_EFFECTS_TABLE", ledger.effects_table)
    run = FaultRun(scenario=scenario, broker=broker, url=broker_url, queue=ledger.queue, workdir=tmp_path,
                   ledger=ledger)
    try:
        yield run
    finally:
        for process in run.workers:
            if process.poll() is None:
                process.kill()
                process.wait()
        await ledger.drop_effects_table(state_schema)
        try:
            async with transport_from_url(broker_url) as transport:
                await transport.delete(ledger.queue)
        except Exception:  # the broker may be the thing the scenario broke; leave the queue
            pass


@pytest.fixture
def record_figures() -> list[Figures]:
    return _FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("fault-injection figures")
        for figures in _FIGURES:
            terminalreporter.write_line(figures.line())
