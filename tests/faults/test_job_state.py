"""The job-state store after a worker ``kill -9`` mid-batch, on both brokers: besides the ledger's
invariants, every job's record ends as the ledger says (succeeded or dead-lettered) and no
attempt is left running. The worker is killed with transitions still in its buffer: what it had
finished and acked is written from its spill file by the next worker on the host, and what it was
running is marked abandoned (a 3 s lease) and then finished by the redelivery."""

from __future__ import annotations

import asyncio
import signal
import time
from urllib.parse import urlsplit

from conveyor.common.job_state import JobRecord, JobState, SQLiteJobStateStore, job_state_store_from_url
from tests.faults.harness import FaultRun, check
from tests.faults.ledger import Figures
from tests.faults.proxy import FaultProxy
from tests.faults.test_scenarios import BOTH, IN_FLIGHT, RABBITMQ, _jobs, _report

LEASE = 3.0


async def _records(store: SQLiteJobStateStore, job_ids: list[str]) -> dict[str, JobRecord | None]:
    return {job_id: await store.get(job_id) for job_id in job_ids}


@BOTH
async def test_worker_kill_9_leaves_every_job_state_right_and_none_running(
    fault_run: FaultRun, record_figures: list[Figures]
) -> None:
    path = fault_run.workdir / "state.db"
    fault_run.ledger.job_state_url = f"sqlite:///{path}"  # this scenario's store is SQLite: the ledger reads it
    env = {"CONVEYOR_JOB_STATE_LEASE": str(LEASE)}
    payloads, dead = _jobs(200, fail_every=25)
    ids = await fault_run.publish(payloads, dead=dead)
    victim = fault_run.start_worker(concurrency=IN_FLIGHT, extra_env=env)
    await fault_run.wait_for_effects(40)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    healed = time.time()
    fault_run.start_worker(concurrency=IN_FLIGHT, extra_env=env)
    figures = await fault_run.settle(healed_at=healed)
    _report(figures, record_figures)
    check(figures, max_duplicate_dead_letters=IN_FLIGHT)

    expected = {job_id: JobState.DEAD_LETTERED if fault_run.ledger.expected[job_id] else JobState.SUCCEEDED
                for job_id in ids}
    async with SQLiteJobStateStore(path) as store:
        deadline = time.monotonic() + 4 * LEASE + 10  # the writer's flush, then the lease and a reconcile
        while True:
            records = await _records(store, ids)
            wrong = {j: (r.state if r else None) for j, r in records.items() if r is None or r.state is not expected[j]}
            live = [(j, a.worker_id) for j, r in records.items() if r for a in r.attempts if a.outcome is None]
            if not wrong and not live:
                break
            assert time.monotonic() < deadline, (
                f"{len(wrong)} jobs in the wrong state (e.g. {list(wrong.items())[:5]}), "
                f"{len(live)} attempts still running (e.g. {live[:5]})"
            )
            await asyncio.sleep(0.5)
    outcomes = [a.outcome for r in records.values() if r for a in r.attempts]
    figures.notes.update(abandoned=outcomes.count("abandoned"), attempts=len(outcomes))
    print(f"\njob-state store: {len(ids)} jobs right; attempts {len(outcomes)}, abandoned {outcomes.count('abandoned')}")
    assert fault_run.stop_workers()[1:] == [0]


@RABBITMQ
async def test_a_job_state_store_outage_neither_blocks_nor_loses_jobs_and_the_states_land_after(
    fault_run: FaultRun, record_figures: list[Figures], database_url: str
) -> None:
    """The workers' PostgreSQL job-state store behind a proxy that refuses and cuts every
    connection for 6 s mid-run: jobs keep succeeding meanwhile, and once it is back every job's
    record ends right (the writers kept their transitions and retried)."""
    host, port = urlsplit(database_url).hostname or "127.0.0.1", urlsplit(database_url).port or 5432
    payloads, dead = _jobs(200, fail_every=40, seconds=0.05)
    ids = await fault_run.publish(payloads, dead=dead)
    async with FaultProxy(host, port) as proxy:
        assert fault_run.ledger.job_state_url
        state_url = proxy.rewrite_url(fault_run.ledger.job_state_url)
        env = {"CONVEYOR_JOB_STATE_URL": state_url, "CONVEYOR_JOB_STATE_LEASE": "30"}
        fault_run.start_worker(concurrency=IN_FLIGHT, extra_env=env)
        await fault_run.wait_for_effects(30)
        proxy.refuse()
        proxy.cut()
        before = len((await fault_run.ledger.effects())[0])
        await asyncio.sleep(6)
        during = len((await fault_run.ledger.effects())[0]) - before
        proxy.accept()
        healed = time.time()
        figures = await fault_run.settle(healed_at=healed)
        figures.notes.update(done_during_outage=during)
        settled = time.monotonic()
        _report(figures, record_figures)
        check(figures)
        assert during >= 20, f"only {during} jobs finished while the store was down: the store blocked them"
        expected = {job_id: JobState.DEAD_LETTERED if fault_run.ledger.expected[job_id] else JobState.SUCCEEDED
                    for job_id in ids}
        async with job_state_store_from_url(fault_run.ledger.job_state_url) as store:
            deadline = time.monotonic() + 30  # the writers' backoff (≤ 5 s) and their next batch
            while True:
                records = {job_id: await store.get(job_id) for job_id in ids}
                wrong = [j for j, r in records.items() if r is None or r.state is not expected[j]]
                if not wrong:
                    break
                assert time.monotonic() < deadline, f"{len(wrong)} of {len(ids)} jobs not in their final state"
                await asyncio.sleep(0.5)
        print(f"job-state store: every state landed {time.monotonic() - settled:.1f} s after the ledger settled")
        assert fault_run.stop_workers() == [0]
