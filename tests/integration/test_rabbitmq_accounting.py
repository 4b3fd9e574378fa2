"""Exact accounting against a real RabbitMQ: every published job id ends in exactly one of
succeeded or dead-lettered, through a kill -9 of a worker and a broker restart."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.errors import TransportError
from common.transport.rabbitmq import RabbitMQTransport
from consumer.dead_letters import DeadLetters
from producer.producer import Producer
from tests.integration import accounting_app

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    queue: str
    out: Path
    url: str

    def env(self) -> dict[str, str]:
        return {**os.environ, "ACCOUNTING_QUEUE": self.queue, "ACCOUNTING_OUT": str(self.out),
                "CONVEYOR_BROKER_URL": self.url, "PYTHONPATH": str(ROOT), "CONVEYOR_LOG_LEVEL": "WARNING"}

    def start_worker(self, concurrency: int = 8) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "consumer.cli", "worker", "tests.integration.accounting_app:jobs",
             "--concurrency", str(concurrency), "--http-port", "0", "--grace-period", "10"],
            cwd=ROOT, env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    def succeeded(self) -> list[str]:
        if not self.out.exists():
            return []
        return [line.split()[0] for line in self.out.read_text().splitlines() if line.strip()]


@pytest.fixture
async def run(amqp_url: str, queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Run]:
    monkeypatch.setenv("ACCOUNTING_QUEUE", queue_name)  # the registry in this process routes the same way
    yield Run(queue=queue_name, out=tmp_path / "succeeded.txt", url=amqp_url)
    async with RabbitMQTransport(amqp_url) as transport:
        await transport.delete(queue_name)


async def publish_all(run: Run, count: int, fail_every: int) -> dict[str, bool]:
    """Publish ``count`` jobs; returns job id → meant to fail. Retries keep the same id."""
    published: dict[str, bool] = {}
    async with Producer.for_registry(RabbitMQTransport(run.url), accounting_app.jobs()) as producer:
        for n in range(count):
            fail = fail_every > 0 and n % fail_every == 0
            envelope = producer.build_envelope("acct.work", {"n": n, "fail": fail})
            await publish_until_confirmed(producer, envelope)
            published[envelope.job_id] = fail
    return published


async def publish_until_confirmed(producer: Producer, envelope: object, deadline: float = 90.0) -> None:
    give_up = time.monotonic() + deadline
    while True:
        try:
            await producer.publish_envelope(envelope)  # type: ignore[arg-type]
            return
        except TransportError:
            if time.monotonic() > give_up:
                raise
            await asyncio.sleep(0.5)


async def dead_lettered_ids(run: Run) -> list[str]:
    async with RabbitMQTransport(run.url) as transport:
        records = await DeadLetters(transport, run.queue).list(limit=100_000)
    return [r.job_id for r in records if r.job_id]


async def wait_for_all(run: Run, published: dict[str, bool], timeout: float) -> tuple[list[str], list[str]]:
    deadline = time.monotonic() + timeout
    while True:
        done, dead = run.succeeded(), await dead_lettered_ids(run)
        if set(done) | set(dead) >= set(published):
            return done, dead
        if time.monotonic() > deadline:
            missing = set(published) - set(done) - set(dead)
            pytest.fail(f"{len(missing)} of {len(published)} jobs unaccounted for after {timeout}s")
        await asyncio.sleep(0.5)


def assert_exact_accounting(published: dict[str, bool], done: list[str], dead: list[str]) -> None:
    succeeded, dead_set = set(done), set(dead)
    assert succeeded.isdisjoint(dead_set), "a job both succeeded and was dead-lettered"
    assert succeeded | dead_set == set(published), "lost or foreign jobs"
    assert dead_set == {job for job, fail in published.items() if fail}, "only the failing jobs are dead letters"
    assert len(dead) == len(dead_set), "a job was dead-lettered twice"


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


async def test_kill_9_of_a_worker_mid_batch_loses_nothing(run: Run) -> None:
    published = await publish_all(run, 400, fail_every=25)
    victim = run.start_worker()
    try:
        deadline = time.monotonic() + 60
        while len(run.succeeded()) < 60:
            assert victim.poll() is None, victim.stderr.read().decode() if victim.stderr else ""
            assert time.monotonic() < deadline, "the first worker made no progress"
            await asyncio.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    finally:
        if victim.poll() is None:
            victim.kill()
    survivor = run.start_worker()
    try:
        done, dead = await wait_for_all(run, published, timeout=120)
    finally:
        assert stop(survivor) == 0
    assert_exact_accounting(published, done, dead)
    duplicates = len(done) - len(set(done))
    print(f"\nkill -9: {len(published)} jobs, {len(set(done))} succeeded, {len(dead)} dead-lettered, "
          f"{duplicates} re-run after the kill (at-least-once)")
    assert duplicates <= 8, "only jobs in flight at the kill (concurrency 8) may run twice"


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
