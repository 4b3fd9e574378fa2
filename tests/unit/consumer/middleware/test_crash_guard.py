"""The crash guard in a worker: a suspect runs alone, and one at its crash limit is
dead-lettered as ``crash_loop`` without running."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from pydantic import BaseModel

from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer
from conveyor.schemas.dead_letter import DeadLetterRecord


class Job(BaseModel):
    n: int


def _registry(log: list[tuple[str, int, str]], running: list[int]) -> JobRegistry:
    jobs = JobRegistry()

    @jobs.job("t.guarded")
    async def handler(payload: Job, ctx: JobContext) -> None:
        running[0] += 1
        log.append(("start", payload.n, str(running[0])))
        await asyncio.sleep(0.02)
        running[0] -= 1

    return jobs


async def _publish(broker: MemoryBroker, jobs: JobRegistry, count: int) -> list[str]:
    ids = []
    async with Producer.for_registry(MemoryTransport(broker), jobs) as producer:
        for n in range(count):
            envelope = producer.build_envelope("t.guarded", Job(n=n))
            await producer.publish_envelope(envelope)
            ids.append(envelope.job_id)
    return ids


def _dead_journal(directory: Path, lines: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "1-dead.journal").write_text(lines)  # nobody holds its lock: its writer died


async def test_a_job_running_when_a_worker_died_runs_alone_and_succeeds(tmp_path: Path) -> None:
    broker = MemoryBroker()
    log: list[tuple[str, int, str]] = []
    jobs = _registry(log, [0])
    ids = await _publish(broker, jobs, 8)
    _dead_journal(tmp_path, f"S {ids[3]} {time.time():.3f}\n")
    config = WorkerConfig(concurrency=8, state_dir=tmp_path)
    async with MemoryTransport(broker) as transport, Worker(transport, jobs, config=config) as worker:
        await broker.join(DEFAULT_QUEUE)
    assert worker.counts["succeeded"] == 8
    [suspect_start] = [entry for entry in log if entry[1] == 3]
    assert suspect_start[2] == "1", "the suspect started while other jobs were running"
    assert max(int(entry[2]) for entry in log) > 1, "ordinary jobs still run concurrently"
    assert list(tmp_path.glob("*.journal")) == [], "a clean stop with nothing suspect leaves no journal"


async def test_a_job_at_its_crash_limit_is_dead_lettered_as_crash_loop_without_running(tmp_path: Path) -> None:
    broker = MemoryBroker()
    log: list[tuple[str, int, str]] = []
    jobs = _registry(log, [0])
    ids = await _publish(broker, jobs, 3)
    now = time.time()
    kills = "".join(f"K {ids[1]} {pid}-dead {now - pid:.3f}\n" for pid in (30, 20, 10))
    _dead_journal(tmp_path, f"C {ids[1]} 3 {now:.3f}\n{kills}")
    config = WorkerConfig(concurrency=4, state_dir=tmp_path, crash_limit=3)
    async with MemoryTransport(broker) as transport, Worker(transport, jobs, config=config) as worker:
        await broker.join(DEFAULT_QUEUE)
    assert sorted(entry[1] for entry in log) == [0, 2]
    assert worker.counts["succeeded"] == 2 and worker.counts["dead_lettered"] == 1
    async with MemoryTransport(broker) as transport:
        delivery = await transport.get(DEFAULT_QUEUE + ".dlq")
        assert delivery is not None
        record = DeadLetterRecord.model_validate_json(delivery.body)
    assert record.reason == "crash_loop"
    assert record.job_id == ids[1]
    assert "3 times" in (record.error_message or "")
    assert all(f"worker {pid}-dead" in (record.error_message or "") for pid in (30, 20, 10)), record.error_message
