"""The transactional outbox under faults, with the ledger: the application commits jobs in its own
transactions (every 7th rolled back), ``conveyor outbox relay`` processes publish them, real
``conveyor worker`` processes run them with the idempotency store.

Invariants (tests/faults/ledger.py): every committed row's job ran once in effect (lost = 0,
duplicate effects = 0) and no rolled-back row's job ran at all.

- kill -9 of a relay while its batch transaction is open (rows published, not yet marked sent):
  a second relay publishes those rows again under the same job ids;
- the broker unreachable for the relay while the application keeps committing: through a
  FaultProxy (tests/faults/proxy.py), never by stopping the shared broker. On RabbitMQ the
  proxy cuts the relay's live connection and refuses new ones; a Pulsar client connects to the
  address the broker advertises after its lookup, so there the proxy refuses the lookup and the
  relay cannot connect at all until the outage ends.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import psycopg
import pytest

from conveyor.common.errors import TransportError
from conveyor.common.transport.factory import transport_from_url
from conveyor.producer.outbox import Outbox, migrate
from tests.faults import app
from tests.faults.harness import ROOT, FaultRun, check
from tests.faults.ledger import Figures
from tests.faults.proxy import FaultProxy

BOTH = pytest.mark.parametrize("broker", ["rabbitmq", "pulsar"])
ROLLBACK_EVERY = 7


async def _declare(fault_run: FaultRun) -> None:
    """The queue and its DLQ exist before anything can be killed: the ledger reads the DLQ.
    Three tries: on a loaded 2-core machine a Pulsar connect has been seen to time out once."""
    for attempt in range(3):
        try:
            async with transport_from_url(fault_run.url) as transport:
                await transport.declare(fault_run.queue)
            return
        except TransportError:
            if attempt == 2:
                raise
            await asyncio.sleep(1.0)


@pytest.fixture
async def outbox_table(database_url: str) -> AsyncIterator[str]:
    table = f"fault_outbox_{uuid.uuid4().hex[:10]}"
    connection = await asyncpg.connect(database_url)
    try:
        await migrate(connection, table)
        yield table
        await connection.execute(f"DROP TABLE IF EXISTS {table}; DROP FUNCTION IF EXISTS {table}_notify()")
    finally:
        await connection.close()


class Application:
    """The service: one transaction per job, every ``ROLLBACK_EVERY``-th rolled back after its add."""

    def __init__(self, fault_run: FaultRun, database_url: str, table: str) -> None:
        self.run, self.database_url, self.table = fault_run, database_url, table
        self.outbox = Outbox(jobs=app.jobs(), table=table)
        self.rolled_back: list[str] = []
        self.committed = 0
        self._next = 0

    def commit(self, count: int, pause: float = 0.0) -> None:
        with psycopg.connect(self.database_url) as connection:
            for _ in range(count):
                n, self._next = self._next, self._next + 1
                rollback = n % ROLLBACK_EVERY == 0
                with connection.transaction() as tx:
                    job_id = self.outbox.add(connection, app.JOB_TYPE, {"n": n, "seconds": 0.01})
                    if rollback:
                        raise psycopg.Rollback(tx)  # leaves the block (the exception is swallowed), rolled back
                if rollback:
                    self.rolled_back.append(job_id)
                    continue
                self.run.ledger.expect(job_id)  # after the commit returned
                self.committed += 1
                if pause:
                    time.sleep(pause)

    async def sent(self) -> int:
        connection = await asyncpg.connect(self.database_url)
        try:
            return int(await connection.fetchval(f"SELECT count(*) FROM {self.table} WHERE sent_at IS NOT NULL"))
        finally:
            await connection.close()


def start_relay(fault_run: FaultRun, database_url: str, table: str, *, url: str | None = None,
                batch: int = 100) -> subprocess.Popen[bytes]:
    log = open(fault_run.workdir / f"relay-{uuid.uuid4().hex[:6]}.log", "wb")
    env = fault_run.env(url, {"CONVEYOR_OUTBOX_DATABASE_URL": database_url})
    process = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "outbox", "relay", "--table", table, "--http-port", "0",
         "--batch-size", str(batch), "--poll-interval", "1"],
        cwd=ROOT, env=env, stdout=log, stderr=log,
    )
    log.close()
    fault_run.workers.append(process)  # killed by the fixture if the test fails
    return process


async def _kill_inside_a_batch(relay: subprocess.Popen[bytes], database_url: str, table: str, *, after_sent: int,
                               timeout: float = 60.0) -> None:
    """SIGKILL the relay while a batch transaction is open (rows published, not yet marked sent),
    once it has committed at least ``after_sent`` rows: a kill in the middle of its work."""
    connection = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            inside = await connection.fetchval(
                f"SELECT (SELECT count(*) FROM {table} WHERE sent_at IS NOT NULL) >= $1 AND EXISTS ("
                " SELECT 1 FROM pg_stat_activity WHERE application_name = 'conveyor-outbox-relay'"
                " AND state = 'idle in transaction' AND query LIKE $2)",
                after_sent, f"%FROM {table} WHERE sent_at IS NULL%")
            if inside:
                relay.send_signal(signal.SIGKILL)
                relay.wait()
                return
            await asyncio.sleep(0.001)
    finally:
        await connection.close()
    pytest.fail("the relay never held a batch open after its first commits")


async def _settle_and_check(fault_run: FaultRun, application: Application, record_figures: list[Figures],
                            healed_at: float, **notes: object) -> Figures:
    figures = await fault_run.settle(timeout=180, healed_at=healed_at)
    snap = await fault_run.ledger.snapshot()
    ran_rolled_back = set(application.rolled_back) & (set(snap.executions) | set(snap.effects))
    figures.notes.update(committed=application.committed, rolled_back=len(application.rolled_back),
                         rolled_back_ran=len(ran_rolled_back), **notes)
    record_figures.append(figures)
    print("\n" + figures.line())
    check(figures)
    assert application.rolled_back and not ran_rolled_back, figures.line()
    assert figures.published == application.committed
    return figures


@BOTH
async def test_outbox_relay_kill_9_mid_batch(fault_run: FaultRun, database_url: str, outbox_table: str,
                                             record_figures: list[Figures]) -> None:
    await _declare(fault_run)
    application = Application(fault_run, database_url, outbox_table)
    await asyncio.to_thread(application.commit, 200)
    fault_run.start_worker(concurrency=8)
    committing = asyncio.create_task(asyncio.to_thread(application.commit, 300, 0.005))  # the app goes on
    victim = start_relay(fault_run, database_url, outbox_table, batch=25)
    await _kill_inside_a_batch(victim, database_url, outbox_table, after_sent=50)
    assert victim.returncode == -signal.SIGKILL
    sent_at_kill = await application.sent()
    healed = time.time()
    start_relay(fault_run, database_url, outbox_table, batch=25)
    await committing
    await _settle_and_check(fault_run, application, record_figures, healed, sent_at_kill=sent_at_kill)
    assert 50 <= sent_at_kill < application.committed, "the kill came in the middle of the relay's work"


@BOTH
async def test_outbox_broker_unreachable_while_the_application_commits(
        fault_run: FaultRun, broker: str, database_url: str, outbox_table: str,
        record_figures: list[Figures]) -> None:
    await _declare(fault_run)
    application = Application(fault_run, database_url, outbox_table)
    target = urlsplit(fault_run.url)
    fault_run.start_worker(concurrency=8)  # workers reach the broker directly: only the relay is cut off
    async with FaultProxy(target.hostname or "127.0.0.1", target.port or 5672) as proxy:
        if broker == "pulsar":
            proxy.refuse()  # before the relay's first lookup: it cannot connect at all
        start_relay(fault_run, database_url, outbox_table, url=proxy.rewrite_url(fault_run.url))
        await asyncio.to_thread(application.commit, 30)
        if broker == "rabbitmq":
            await fault_run.wait_for_effects(10)  # the relay is publishing through the proxy
            proxy.refuse()
            cut = proxy.cut()
            assert cut >= 1, "the relay's connection goes through the proxy"
        outage_started = time.monotonic()
        committing = asyncio.create_task(asyncio.to_thread(application.commit, 120, 0.05))  # ~6 s of commits
        await asyncio.sleep(8.0)
        sent_during = await application.sent()
        unsent_at_heal = application.committed - sent_during
        proxy.accept()
        healed = time.time()
        outage = time.monotonic() - outage_started
        await committing
        await _settle_and_check(fault_run, application, record_figures, healed,
                                outage_seconds=round(outage, 1), unsent_at_heal=unsent_at_heal)
    assert unsent_at_heal > 0, "the outage held back no row: the relay was not cut off"
