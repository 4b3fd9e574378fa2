"""Exact accounting against a real RabbitMQ: every published job id ends in exactly one of
succeeded or dead-lettered, through a kill -9 of a worker and a broker restart."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conveyor.common.transport.rabbitmq import RabbitMQTransport
from tests.integration.accounting import (
    Run,
    assert_exact_accounting,
    kill_9_mid_batch,
    publish_all,
    stop,
    wait_for_all,
)


@pytest.fixture
async def run(amqp_url: str, queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Run]:
    monkeypatch.setenv("ACCOUNTING_QUEUE", queue_name)  # the registry in this process routes the same way
    yield Run(queue=queue_name, out=tmp_path / "succeeded.txt", url=amqp_url)
    async with RabbitMQTransport(amqp_url) as transport:
        await transport.delete(queue_name)


async def test_kill_9_of_a_worker_mid_batch_loses_nothing(run: Run) -> None:
    published, done, dead = await kill_9_mid_batch(run)
    assert_exact_accounting(published, done, dead)
    assert len(done) - len(set(done)) <= 8, "only jobs in flight at the kill (concurrency 8) may run twice"


def _rabbitmqctl() -> str:
    path = shutil.which("rabbitmqctl")
    if path is None:
        pytest.fail("the broker-restart test needs rabbitmqctl on this machine (scripts/services/rabbitmq.sh)")
    return path


async def _ctl(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        _rabbitmqctl(), *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await process.communicate()
    assert process.returncode == 0, err.decode()


async def test_broker_restart_mid_run_loses_nothing_and_workers_resume(run: Run) -> None:
    first = await publish_all(run, 150, fail_every=30)
    worker = run.start_worker()
    try:
        deadline = time.monotonic() + 60
        while len(run.succeeded()) < 30:
            assert time.monotonic() < deadline, "worker made no progress before the restart"
            await asyncio.sleep(0.05)
        await _ctl("stop_app")  # the broker goes away under a consuming worker…
        await asyncio.sleep(2)
        await _ctl("start_app")  # …and comes back with its durable queues
        second = await publish_all(run, 150, fail_every=30)  # publishing works again
        published = {**first, **second}
        done, dead = await wait_for_all(run, published, timeout=120)
        assert worker.poll() is None, "the worker must survive a broker restart"
    finally:
        code = stop(worker)
    assert code == 0
    assert_exact_accounting(published, done, dead)
    print(f"\nbroker restart: {len(published)} jobs, {len(set(done))} succeeded, {len(dead)} dead-lettered, "
          f"{len(done) - len(set(done))} re-run")
