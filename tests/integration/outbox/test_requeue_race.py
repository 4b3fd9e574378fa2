"""``conveyor outbox requeue`` racing a running relay, on the real PostgreSQL and RabbitMQ.

The relay refuses rows for a queue the broker does not have (marked failed); the operator
requeues them while the cause is still there (refused again: nothing published, nothing lost),
then declares the queue and requeues over and over -- three CLI processes and an
in-process loop, a few rows at a time and then all, at once -- while the application keeps committing jobs and the relay keeps
publishing. Every job must reach the queue exactly once, every failed row be handed back
exactly once in all (a requeue never counts a row another requeue already gave back), and no
row be left unsent or failed.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import asyncpg

from conveyor.common.transport.factory import transport_from_url
from conveyor.producer.outbox import OutboxRelay, RelayConfig, failed_rows, requeue_failed
from conveyor.producer.producer import Producer
from tests.integration.outbox.test_relay import _add
from tests.support.e2e_worker import ROOT

FIRST, LATER_BATCHES, LATER_SIZE = 40, 8, 5


async def _cli_requeue(database_url: str, table: str) -> int:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "conveyor", "outbox", "requeue", "--table", table, cwd=ROOT,
        env={**os.environ, "CONVEYOR_OUTBOX_DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    found = re.search(r"requeued (\d+) failed row", out.decode())
    assert found, out.decode()
    return int(found.group(1))


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_requeue_racing_a_running_relay_publishes_every_job_exactly_once(
        database_url: str, table: str, amqp_url: str, queue_name: str, db: asyncpg.Connection) -> None:
    async def count(where: str) -> int:
        return int(await db.fetchval(f"SELECT count(*) FROM {table} WHERE {where}"))

    async def all_failed() -> bool:
        return await count("failed_at IS NOT NULL") == FIRST

    first = _add(database_url, table, FIRST, queue=queue_name)  # the queue does not exist yet
    relay = OutboxRelay(
        database_url,
        lambda: Producer(transport_from_url(amqp_url), allow_unregistered=True, declare_queues=False),
        config=RelayConfig(table=table, batch_size=7, poll_interval=0.1),
    )
    later: list[str] = []
    requeued: list[int] = []

    async def application() -> None:
        for _ in range(LATER_BATCHES):
            later.extend(await asyncio.to_thread(_add, database_url, table, LATER_SIZE, queue=queue_name))
            await asyncio.sleep(0.05)

    async def operator_loop() -> None:
        """A few rows at a time first (the relay publishes some while others are still failed),
        then the whole table, again and again."""
        connection = await asyncpg.connect(database_url)
        try:
            ids = [r.id for r in await failed_rows(connection, table)]
            for at in range(0, len(ids), 3):
                requeued.append(await requeue_failed(connection, table, ids=ids[at:at + 3]))
                await asyncio.sleep(0.02)
            for _ in range(60):
                requeued.append(await requeue_failed(connection, table))
                await asyncio.sleep(0.01)
        finally:
            await connection.close()

    async def operator_cli() -> None:
        requeued.append(await _cli_requeue(database_url, table))

    stop = asyncio.Event()
    async with relay:
        running = asyncio.create_task(relay.run(stop))
        try:
            await _until(all_failed, "the relay to refuse every row")
            # The cause is still there: handed back, refused again, nothing published.
            assert await _cli_requeue(database_url, table) == FIRST
            await _until(all_failed, "the relay to refuse every requeued row again")
            async with transport_from_url(amqp_url) as admin:
                await admin.declare(queue_name)  # the operator fixes the cause
            await asyncio.gather(application(), operator_loop(), *(operator_cli() for _ in range(3)))

            async def all_sent() -> bool:
                return await count("sent_at IS NULL") == 0

            await _until(all_sent, "every row to be sent")
        finally:
            stop.set()
            await running
    assert sum(requeued) == FIRST, requeued  # each failed row given back once, by one requeue
    assert await failed_rows(db, table) == []
    attempts = {r["job_id"]: r["attempts"] for r in await db.fetch(f"SELECT job_id, attempts FROM {table}")}
    assert {attempts[j] for j in first} == {3} and {attempts[j] for j in later} == {1}  # refused, refused, sent

    received: Counter[str] = Counter()
    async with transport_from_url(amqp_url) as reader:
        empty = 0
        while empty < 10:  # past the last one a while longer: a duplicate would still arrive
            delivery = await reader.get(queue_name)
            if delivery is None:
                empty += len(received) >= FIRST + len(later)
                await asyncio.sleep(0.05)
                continue
            received[delivery.message_id] += 1
            await delivery.ack()
        await reader.delete(queue_name)
    assert len(later) == LATER_BATCHES * LATER_SIZE
    assert set(received) == set(first) | set(later)
    assert max(received.values()) == 1, [j for j, n in received.items() if n > 1]
