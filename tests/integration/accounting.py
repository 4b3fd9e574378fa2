"""Exact-accounting helpers for any broker URL: worker processes, publishing, the final tally.

Every published job id must end in exactly one of succeeded (a line in ``Run.out``, written by
``tests.integration.accounting_app``) or dead-lettered (a record in the queue's DLQ). The
broker comes from the URL through ``transport_from_url``, as the CLI's worker gets it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conveyor.common.errors import TransportError
from conveyor.common.transport.factory import transport_from_url
from conveyor.consumer.ops.dead_letters import DeadLetters
from conveyor.producer.producer import Producer
from conveyor.schemas.envelope import Envelope
from tests.integration import accounting_app

__all__ = [
    "ROOT",
    "Run",
    "kill_9_mid_batch",
    "assert_exact_accounting",
    "dead_lettered_ids",
    "publish_all",
    "publish_until_confirmed",
    "stop",
    "wait_for_all",
]

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    queue: str
    out: Path
    url: str

    def env(self) -> dict[str, str]:
        return {**os.environ, "ACCOUNTING_QUEUE": self.queue, "ACCOUNTING_OUT": str(self.out),
                "CONVEYOR_BROKER_URL": self.url, "PYTHONPATH": str(ROOT), "CONVEYOR_LOG_LEVEL": "WARNING"}

    def start_worker(self, concurrency: int = 8, http_port: int = 0) -> subprocess.Popen[bytes]:
        """A worker process; ``http_port`` serves /readyz (0: no HTTP server)."""
        return subprocess.Popen(
            [sys.executable, "-m", "conveyor", "worker", "tests.integration.accounting_app:jobs",
             "--concurrency", str(concurrency), "--http-port", str(http_port), "--grace-period", "10"],
            cwd=ROOT, env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    def succeeded(self) -> list[str]:
        if not self.out.exists():
            return []
        return [line.split()[0] for line in self.out.read_text().splitlines() if line.strip()]


async def publish_all(run: Run, count: int, fail_every: int) -> dict[str, bool]:
    """Publish ``count`` jobs; returns job id → meant to fail. Retries keep the same id."""
    published: dict[str, bool] = {}
    async with Producer.for_registry(transport_from_url(run.url), accounting_app.jobs()) as producer:
        for n in range(count):
            fail = fail_every > 0 and n % fail_every == 0
            envelope = producer.build_envelope("acct.work", {"n": n, "fail": fail})
            await publish_until_confirmed(producer, envelope)
            published[envelope.job_id] = fail
    return published


async def publish_until_confirmed(producer: Producer, envelope: Envelope, deadline: float = 90.0) -> None:
    give_up = time.monotonic() + deadline
    while True:
        try:
            await producer.publish_envelope(envelope)
            return
        except TransportError:
            if time.monotonic() > give_up:
                raise
            await asyncio.sleep(0.5)


async def dead_lettered_ids(run: Run) -> list[str]:
    async with transport_from_url(run.url) as transport:
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


def assert_exact_accounting(
    published: dict[str, bool], done: list[str], dead: list[str], *, max_duplicate_dead_letters: int = 0
) -> None:
    """Each job succeeded or was dead-lettered, never both, none lost, none foreign.

    ``max_duplicate_dead_letters``: how many jobs may have two dead-letter records (a lost ack
    after a confirmed DLQ publish means the broker redelivers, at least once); 0 by default.
    """
    succeeded, dead_set = set(done), set(dead)
    assert succeeded.isdisjoint(dead_set), "a job both succeeded and was dead-lettered"
    assert succeeded | dead_set == set(published), "lost or foreign jobs"
    assert dead_set == {job for job, fail in published.items() if fail}, "only the failing jobs are dead letters"
    assert len(dead) - len(dead_set) <= max_duplicate_dead_letters, "a job was dead-lettered twice"


def stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM (the worker drains), then SIGKILL after 30 s; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


async def kill_9_mid_batch(run: Run, *, jobs: int = 400, fail_every: int = 25,
                           settle_timeout: float = 120) -> tuple[dict[str, bool], list[str], list[str]]:
    """Publish ``jobs``, kill -9 the first worker after 60 successes, let a second finish.

    Returns what was published and the succeeded / dead-lettered job ids for the caller's
    broker-specific assertions.
    """
    published = await publish_all(run, jobs, fail_every=fail_every)
    victim = run.start_worker()
    try:
        deadline = time.monotonic() + 90
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
        done, dead = await wait_for_all(run, published, timeout=settle_timeout)
    finally:
        assert stop(survivor) == 0
    duplicates = len(done) - len(set(done))
    print(f"\nkill -9: {len(published)} jobs, {len(set(done))} succeeded, {len(dead)} dead-lettered "
          f"({len(dead) - len(set(dead))} twice), {duplicates} re-run after the kill (at-least-once)")
    return published, done, dead
